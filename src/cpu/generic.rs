//! The portable Linear kernel: plain Rust over the panel layout, which the
//! compiler vectorizes for whatever target it builds. It converts each
//! panel row once and applies it to every row of the tile.

use super::{KernelScratch, LinearJob};
use crate::format::PANEL;

pub fn linear(job: &mut LinearJob<'_>, scratch: &mut KernelScratch) {
    let rows = job.rows;
    let acc = &mut scratch.panel;
    acc.resize(rows * PANEL, 0.0);
    let mut converted = [0.0f32; PANEL];
    for p in 0..job.n.div_ceil(PANEL) {
        acc.fill(0.0);
        for range in job.k_ranges {
            for k in range.clone() {
                job.w
                    .read_into((p * job.k_total + k) * PANEL, &mut converted);
                for r in 0..rows {
                    let xk = job.x[r * job.ldx + job.in_off + k];
                    for (a, w) in acc[r * PANEL..(r + 1) * PANEL].iter_mut().zip(&converted) {
                        *a += w * xk;
                    }
                }
            }
        }
        let valid = PANEL.min(job.n - p * PANEL);
        for r in 0..rows {
            for j in 0..valid {
                let out = p * PANEL + j;
                job.y[r * job.ldy + job.out_off + out] = job.finish(r, out, acc[r * PANEL + j]);
            }
        }
    }
}
