// score_cpp: scores a synthetic request on any mmoe model through mmoe.hpp.
//
//   score_cpp MODEL.mmoe [CANDIDATES]
//
// Opens the engine, prints the model's name, tasks and inputs, builds a
// deterministic request for every input (dense values from an LCG in
// [-1, 1), sparse bags of 1-3 ids), scores it, prints the top 3 candidates
// of each task, then shows error handling with a malformed request.

#include "mmoe.hpp"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

namespace {

/// A 64-bit LCG (Knuth's MMIX constants): the same numbers everywhere.
class Lcg {
 public:
  explicit Lcg(std::uint64_t seed) : state_(seed) {}
  /// 31 random bits.
  std::uint32_t next() {
    state_ = state_ * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint32_t>(state_ >> 33);
  }
  /// Uniform in [-1, 1).
  float uniform() { return static_cast<float>(next() / 1073741824.0 - 1.0); }

 private:
  std::uint64_t state_;
};

/// One input's synthetic values; the request borrows these vectors.
struct FeatureData {
  mmoe::InputInfo info;
  std::vector<float> dense;
  std::vector<std::uint64_t> ids;
  std::vector<std::uint32_t> offsets;
};

std::vector<FeatureData> synthesize(const std::vector<mmoe::InputInfo>& inputs,
                                    std::size_t candidates, std::uint64_t seed) {
  Lcg rng(seed);
  std::vector<FeatureData> data;
  data.reserve(inputs.size());
  for (const mmoe::InputInfo& info : inputs) {
    FeatureData f{info, {}, {}, {}};
    const std::size_t rows = info.scope == MMOE_SCOPE_REQUEST ? 1 : candidates;
    if (info.kind == MMOE_INPUT_DENSE) {
      f.dense.resize(rows * info.dim);
      for (float& x : f.dense) x = rng.uniform();
    } else {
      f.offsets.push_back(0);
      for (std::size_t bag = 0; bag < rows; ++bag) {
        const std::uint32_t n = 1 + rng.next() % 3;
        for (std::uint32_t k = 0; k < n; ++k) f.ids.push_back(rng.next());
        f.offsets.push_back(static_cast<std::uint32_t>(f.ids.size()));
      }
    }
    data.push_back(std::move(f));
  }
  return data;
}

void add(mmoe::Request& request, const FeatureData& f) {
  if (f.info.kind == MMOE_INPUT_DENSE) {
    request.dense(f.info.index, f.dense);
  } else {
    request.sparse(f.info.index, f.ids, f.offsets);
  }
}

int run(const char* path, std::size_t candidates) {
  if (!mmoe::abi_compatible()) {
    std::fprintf(stderr, "score_cpp: library ABI %u, header ABI %u\n",
                 static_cast<unsigned>(mmoe_abi_version()), static_cast<unsigned>(MMOE_ABI_VERSION));
    return 1;
  }
  std::printf("mmoe %s (ABI %u)\n", mmoe::version().c_str(),
              static_cast<unsigned>(mmoe_abi_version()));

  const mmoe::Engine engine = mmoe::Engine::open(path);
  engine.set_warm_up(candidates);  // later reloads warm the new model up before it serves
  const std::vector<std::string> tasks = engine.task_names();
  const std::vector<mmoe::InputInfo> inputs = engine.inputs();

  std::printf("model   %s (content hash %016" PRIx64 ", generation %" PRIu64 ")\n",
              engine.model_name().c_str(), engine.content_hash(), engine.generation());
  std::printf("device  %s (%s)\n", engine.device() == MMOE_DEVICE_CUDA ? "CUDA" : "CPU",
              engine.device_note().c_str());
  std::printf("tasks   %zu:", tasks.size());
  for (const std::string& t : tasks) std::printf(" %s", t.c_str());
  std::printf("\ninputs  %zu:\n", inputs.size());
  for (const mmoe::InputInfo& in : inputs) {
    std::printf("  [%2u] %-16s %-6s %-9s dim %zu\n", static_cast<unsigned>(in.index),
                in.name.c_str(), mmoe::to_string(in.kind), mmoe::to_string(in.scope), in.dim);
  }

  // The request borrows `data`, which must outlive every score() call.
  const std::vector<FeatureData> data = synthesize(inputs, candidates, 42);
  mmoe::Request request(candidates);
  for (const FeatureData& f : data) add(request, f);

  mmoe::Session session(engine);
  session.warm_up(candidates);  // before traffic: scratch, and on a GPU the graphs
  const std::size_t n = candidates * tasks.size();
  std::vector<float> logits(n), probabilities(n);
  session.score(request, logits, probabilities);

  const std::vector<float> again = session.score(request, tasks.size());
  std::printf("scored  %zu candidates x %zu tasks (logits-only overload agrees: %s)\n",
              candidates, tasks.size(), again == logits ? "yes" : "NO");

  std::printf("top 3 per task:\n");
  std::vector<std::size_t> order(candidates);
  for (std::size_t t = 0; t < tasks.size(); ++t) {
    for (std::size_t c = 0; c < candidates; ++c) order[c] = c;
    const auto p = [&](std::size_t c) { return probabilities[c * tasks.size() + t]; };
    const std::size_t top = std::min<std::size_t>(3, candidates);
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(top), order.end(),
                      [&](std::size_t a, std::size_t b) { return p(a) > p(b) || (p(a) == p(b) && a < b); });
    std::printf("  %-12s", tasks[t].c_str());
    for (std::size_t k = 0; k < top; ++k) std::printf("  #%-4zu p=%.6f", order[k], p(order[k]));
    std::printf("\n");
  }

  // Error handling: the first dense input one value short (or, in a model
  // without dense values, the first sparse input one offset short).
  const FeatureData* victim = nullptr;
  for (const FeatureData& f : data) {
    if (f.info.kind == MMOE_INPUT_DENSE && !f.dense.empty()) {
      victim = &f;
      break;
    }
  }
  for (const FeatureData& f : data) {
    if (victim == nullptr && f.info.kind == MMOE_INPUT_SPARSE) victim = &f;
  }
  if (victim != nullptr) {
    mmoe::Request bad(candidates);
    for (const FeatureData& f : data) add(bad, f);
    if (victim->info.kind == MMOE_INPUT_DENSE) {
      std::printf("error   `%s` given %zu of %zu values:\n", victim->info.name.c_str(),
                  victim->dense.size() - 1, victim->dense.size());
      bad.dense(victim->info.index, mmoe::Span<const float>(victim->dense).first(victim->dense.size() - 1));
    } else {
      std::printf("error   `%s` given %zu of %zu offsets:\n", victim->info.name.c_str(),
                  victim->offsets.size() - 1, victim->offsets.size());
      bad.sparse(victim->info.index, victim->ids,
                 mmoe::Span<const std::uint32_t>(victim->offsets).first(victim->offsets.size() - 1));
    }
    try {
      session.score(bad, logits, probabilities);
      std::printf("  unexpected: the malformed request was accepted\n");
      return 1;
    } catch (const mmoe::Error& e) {
      std::printf("  caught mmoe::Error: status %d (%s): %s\n", static_cast<int>(e.status()),
                  e.status_str(), e.what());
    }
  }
  // A count past the library's limit, through the overload that allocates
  // the logits: refused before anything is allocated for it.
  const std::size_t too_many = std::size_t{1} << 34;
  std::printf("error   %zu candidates through score(request, num_tasks):\n", too_many);
  try {
    session.score(mmoe::Request(too_many), engine.num_tasks());
    std::printf("  unexpected: the oversized request was accepted\n");
    return 1;
  } catch (const mmoe::Error& e) {
    if (e.status() != MMOE_STATUS_REQUEST) {
      std::printf("  unexpected status %d: %s\n", static_cast<int>(e.status()), e.what());
      return 1;
    }
    std::printf("  caught mmoe::Error: status %d (%s): %s\n", static_cast<int>(e.status()), e.status_str(),
                e.what());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s MODEL.mmoe [CANDIDATES]\n", argc > 0 ? argv[0] : "score_cpp");
    return 2;
  }
  std::size_t candidates = 8;
  if (argc == 3) {
    char* end = nullptr;
    errno = 0;
    const unsigned long long v = std::strtoull(argv[2], &end, 10);
    if (errno != 0 || end == argv[2] || *end != '\0' || argv[2][0] == '-' || v == 0 || v > 1000000) {
      std::fprintf(stderr, "score_cpp: CANDIDATES must be an integer in 1..1000000, got `%s`\n", argv[2]);
      return 2;
    }
    candidates = static_cast<std::size_t>(v);
  }
  try {
    return run(argv[1], candidates);
  } catch (const mmoe::Error& e) {
    std::fprintf(stderr, "score_cpp: mmoe error %d (%s): %s\n", static_cast<int>(e.status()),
                 e.status_str(), e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "score_cpp: %s\n", e.what());
  }
  return 1;
}
