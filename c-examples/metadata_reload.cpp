// metadata_reload: task_names(), inputs() and input(i) read while another thread
// reloads the engine between two models of different shapes (MODEL and
// SMALL): each list must be all of one model, never the count of one and
// the names of the other, and no read may fail. Runs until RELOADS reloads.
//
//   metadata_reload MODEL.mmoe SMALL.mmoe [RELOADS]

#include "mmoe.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>
#include <vector>

namespace {

std::string describe(const mmoe::InputInfo& input) { return input.name + ":" + std::to_string(input.dim); }

std::vector<std::string> input_names(const mmoe::Engine& engine) {
  std::vector<std::string> names;
  for (const mmoe::InputInfo& input : engine.inputs()) names.push_back(describe(input));
  return names;
}

template <class T>
bool one_of(const T& value, const T& a, const T& b) {
  return value == a || value == b;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.mmoe SMALL.mmoe [RELOADS]\n", argv[0]);
    return 2;
  }
  const std::string model = argv[1], small = argv[2];
  const long reloads_wanted = argc > 3 ? std::strtol(argv[3], nullptr, 10) : 100;
  try {
    const mmoe::Engine a = mmoe::Engine::open(model), b = mmoe::Engine::open(small);
    const auto tasks_a = a.task_names(), tasks_b = b.task_names();
    const auto inputs_a = input_names(a), inputs_b = input_names(b);
    if (tasks_a == tasks_b || inputs_a == inputs_b) {
      std::fprintf(stderr, "the two models must differ in tasks and inputs\n");
      return 2;
    }

    // One input index where the two models differ: input(i) alone must be of
    // one model too (its name and its dim are two C calls).
    std::size_t differ = 0;
    while (differ + 1 < inputs_a.size() && differ + 1 < inputs_b.size() && inputs_a[differ] == inputs_b[differ]) {
      ++differ;
    }
    const mmoe::Engine engine = mmoe::Engine::open(model);
    std::atomic<bool> stop{false};
    std::atomic<long> reloads{0};
    std::string reload_error;
    std::thread reloader([&] {
      try {
        for (long i = 0; !stop.load(); ++i) {
          engine.reload(i % 2 == 0 ? small : model);
          reloads.fetch_add(1);
        }
      } catch (const std::exception& e) {
        reload_error = e.what();
        stop.store(true);
      }
    });
    long reads = 0, mixed = 0;
    std::string failure;
    while (reloads.load() < reloads_wanted && !stop.load()) {
      try {
        mixed += !one_of(engine.task_names(), tasks_a, tasks_b);
        mixed += !one_of(input_names(engine), inputs_a, inputs_b);
        mixed += !one_of(describe(engine.input(differ)), inputs_a[differ], inputs_b[differ]);
        ++reads;
      } catch (const std::exception& e) {
        failure = e.what();
        break;
      }
    }
    stop.store(true);
    reloader.join();
    if (!reload_error.empty() || !failure.empty() || mixed != 0) {
      std::fprintf(stderr, "FAIL: %ld of %ld reads mixed two models; read error: %s; reload error: %s\n", mixed,
                   reads, failure.c_str(), reload_error.c_str());
      return 1;
    }
    std::printf("metadata_reload: %ld reads of task names, inputs and input %zu over %ld reloads, each of one model\n",
                reads, differ, reloads.load());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
