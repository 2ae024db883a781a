// Runs a grid of the host-compiled kernels (scheduler.cpp).
#pragma once

#include <functional>
#include <string>

#include "cuda_emu.hpp"

namespace emu {
// Runs `body` as every thread of every block of `grid`, with
// `shared_bytes` of dynamic shared memory, the blocks one after another in
// ascending order (descending with `reverse_blocks`); false with `error`
// set when a block cannot complete (a deadlock at a barrier).
bool run_grid(const uint3& grid, const uint3& block, size_t shared_bytes, bool reverse_blocks,
              const std::function<void()>& body, std::string& error);
}  // namespace emu
