"""Writes the rows of days [A, B) of an impression table to a new Parquet file.

    split_days.py IN.parquet OUT.parquet A B
"""
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq


def main():
    src, dst, a, b = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    table = pq.read_table(src)
    day = table.column("day")
    rows = table.filter(pc.and_(pc.greater_equal(day, a), pc.less(day, b)))
    if rows.num_rows == 0:
        sys.exit(f"{src}: no rows on days {a}..{b}")
    pq.write_table(rows, dst)
    print(f"{dst}: {rows.num_rows} rows of days {a}..{b}")


if __name__ == "__main__":
    main()
