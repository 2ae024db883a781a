// A Request borrows its arrays, so a temporary container passed to it would
// dangle before the call that scores it. Case 0 must compile; every other
// case must be refused by the compiler (`make check` compiles each one).
#include <array>
#include <cstdint>
#include <vector>

#include "mmoe.hpp"

namespace {
const std::vector<float> made_values() { return {1.0f, 2.0f}; }
const std::vector<std::uint64_t> made_ids() { return {7}; }
}  // namespace

int main() {
  mmoe::Request request(1);
  std::vector<float> values = {1.0f, 2.0f};
  const std::vector<float> const_values = {1.0f, 2.0f};
  std::array<float, 2> array_values = {1.0f, 2.0f};
  std::vector<std::uint64_t> ids = {7};
  std::array<std::uint32_t, 2> offsets = {0, 1};
#if CASE == 0  // borrowed lvalues and views
  request.dense(0, values).dense(1, const_values).dense(2, array_values);
  request.dense(3, mmoe::Span<const float>(values.data(), values.size()));
  request.sparse(4, ids, offsets);
#elif CASE == 1
  request.dense(0, std::vector<float>{1.0f});
#elif CASE == 2
  request.dense(0, std::array<float, 2>{1.0f, 2.0f});
#elif CASE == 3
  request.dense(0, made_values());
#elif CASE == 4
  request.sparse(0, ids, std::array<std::uint32_t, 2>{0, 1});
#elif CASE == 5
  request.sparse(0, std::vector<std::uint64_t>{7}, offsets);
#elif CASE == 6
  request.sparse(0, made_ids(), offsets);
#endif
  (void)values;
  (void)const_values;
  (void)array_values;
  (void)ids;
  (void)offsets;
  return 0;
}
