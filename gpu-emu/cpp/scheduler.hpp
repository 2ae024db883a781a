// Runs a grid of the host-compiled kernels (scheduler.cpp).
#pragma once

#include <functional>
#include <string>

#include "cuda_emu.hpp"

namespace emu {
// Runs `body` as every thread of every block of `grid`, with
// `shared_bytes` of dynamic shared memory; false with `error` set when a
// block cannot complete (a deadlock at a barrier).
bool run_grid(const uint3& grid, const uint3& block, size_t shared_bytes, const std::function<void()>& body,
              std::string& error);
}  // namespace emu
