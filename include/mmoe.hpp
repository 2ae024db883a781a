/*
 * mmoe.hpp: a C++17 header-only RAII wrapper over the C API in mmoe.h.
 *
 *   mmoe::Engine engine = mmoe::Engine::open("model.mmoe");
 *   mmoe::Session session(engine);             // one per thread
 *   mmoe::Request request(candidates);         // borrows, never copies
 *   request.dense(engine.input_index("user_dense"), user_dense)
 *          .sparse(engine.input_index("ad_ids"), ids, offsets);
 *   std::vector<float> logits = session.score(request, engine.num_tasks());
 *
 * Every failing C call becomes an mmoe::Error carrying the mmoe_status and
 * the message of mmoe_last_error(). Handles are move-only and free what
 * they own; a moved-from handle is empty (calls on it throw
 * MMOE_STATUS_ARGUMENT errors from the library, never crash).
 *
 * Thread safety follows mmoe.h: an Engine may be shared by threads; a
 * Session is used by one thread at a time; a Request is a plain value.
 */

#ifndef MMOE_HPP
#define MMOE_HPP

#include "mmoe.h"

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace mmoe {

// ---------------------------------------------------------------- Span ----

/// A non-owning view of `size()` contiguous `T`s (C++17 has no std::span).
/// Converts from std::vector, std::array, C arrays, pointer + length and
/// Span<U> where U* converts to T* by a qualification conversion only
/// (e.g. Span<float> to Span<const float>).
template <class T>
class Span {
  template <class U>
  using compatible = std::is_convertible<U (*)[], T (*)[]>;

 public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using size_type = std::size_t;
  using pointer = T*;
  using reference = T&;
  using iterator = T*;

  constexpr Span() noexcept = default;
  constexpr Span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}

  template <std::size_t N>
  constexpr Span(T (&array)[N]) noexcept : data_(array), size_(N) {}

  template <class U, class A, std::enable_if_t<compatible<U>::value, int> = 0>
  Span(std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}

  template <class U, class A, std::enable_if_t<compatible<const U>::value, int> = 0>
  Span(const std::vector<U, A>& v) noexcept : data_(v.data()), size_(v.size()) {}

  template <class U, std::size_t N, std::enable_if_t<compatible<U>::value, int> = 0>
  constexpr Span(std::array<U, N>& a) noexcept : data_(a.data()), size_(N) {}

  template <class U, std::size_t N, std::enable_if_t<compatible<const U>::value, int> = 0>
  constexpr Span(const std::array<U, N>& a) noexcept : data_(a.data()), size_(N) {}

  template <class U, std::enable_if_t<compatible<U>::value, int> = 0>
  constexpr Span(const Span<U>& other) noexcept : data_(other.data()), size_(other.size()) {}

  constexpr T* data() const noexcept { return data_; }
  constexpr std::size_t size() const noexcept { return size_; }
  constexpr bool empty() const noexcept { return size_ == 0; }
  constexpr T* begin() const noexcept { return data_; }
  constexpr T* end() const noexcept { return data_ + size_; }
  /// Unchecked, like std::span.
  constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }

  /// `count` elements from `offset`, clamped to the view.
  constexpr Span subspan(std::size_t offset, std::size_t count = static_cast<std::size_t>(-1)) const noexcept {
    if (offset > size_) offset = size_;
    if (count > size_ - offset) count = size_ - offset;
    return Span(data_ + offset, count);
  }
  constexpr Span first(std::size_t count) const noexcept { return subspan(0, count); }

 private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

// --------------------------------------------------------------- Errors ----

/// A failed mmoe call: its status and the library's message.
class Error : public std::runtime_error {
 public:
  Error(mmoe_status status, const std::string& message)
      : std::runtime_error(message), status_(status) {}

  mmoe_status status() const noexcept { return status_; }
  /// The short, static description of status() ("invalid request", ...).
  const char* status_str() const noexcept { return mmoe_status_str(status_); }

 private:
  mmoe_status status_;
};

namespace detail {

/// This thread's last error message (call right after the failing call).
inline std::string last_error() {
  const std::size_t len = mmoe_last_error(nullptr, 0);
  if (len == 0) return std::string();
  std::vector<char> buf(len + 1);
  const std::size_t got = mmoe_last_error(buf.data(), buf.size());
  return std::string(buf.data(), got < len ? got : len);
}

/// Rejects strings the C API would silently cut at an inner NUL.
inline const char* c_str(const std::string& s, const char* what) {
  if (s.find('\0') != std::string::npos) {
    throw Error(MMOE_STATUS_ARGUMENT, std::string(what) + " contains a NUL byte");
  }
  return s.c_str();
}

}  // namespace detail

/// Throws mmoe::Error unless `status` is MMOE_STATUS_OK.
inline void check(mmoe_status status) {
  if (status != MMOE_STATUS_OK) {
    std::string message = detail::last_error();
    if (message.empty()) message = mmoe_status_str(status);
    throw Error(status, message);
  }
}

namespace detail {

/// True for a temporary (an rvalue) that owns its elements: a std::vector
/// or std::array made in the call. A Span into it would dangle once the
/// statement ends.
template <class T>
struct owns_elements : std::false_type {};
template <class U, class A>
struct owns_elements<std::vector<U, A>> : std::true_type {};
template <class U, std::size_t N>
struct owns_elements<std::array<U, N>> : std::true_type {};
template <class T>
struct is_owning_temporary
    : std::integral_constant<bool, !std::is_lvalue_reference<T>::value &&
                                       owns_elements<std::remove_cv_t<std::remove_reference_t<T>>>::value> {};

/// Text from a `(…, char* buf, size_t buf_len, size_t* out_len)` getter:
/// asks for the length, then copies; retries if the text grew in between
/// (a concurrent reload may swap the model).
template <class F>
std::string text(F&& get) {
  std::size_t len = 0;
  check(get(static_cast<char*>(nullptr), std::size_t{0}, &len));
  for (;;) {
    std::vector<char> buf(len + 1);
    std::size_t now = 0;
    check(get(buf.data(), buf.size(), &now));
    if (now <= len) return std::string(buf.data(), now);
    len = now;
  }
}

}  // namespace detail

// -------------------------------------------------------------- Version ----

/// The library's version text (e.g. "0.1.0").
inline std::string version() { return mmoe_version(); }
/// The library's version number, MAJOR * 10000 + MINOR * 100 + PATCH.
inline std::uint32_t version_number() noexcept { return mmoe_version_number(); }
/// Whether the loaded library speaks the ABI this header was written for.
inline bool abi_compatible() noexcept { return mmoe_abi_version() == MMOE_ABI_VERSION; }

inline const char* to_string(mmoe_status s) noexcept { return mmoe_status_str(s); }

inline const char* to_string(mmoe_input_kind kind) noexcept {
  switch (kind) {
    case MMOE_INPUT_DENSE: return "dense";
    case MMOE_INPUT_SPARSE: return "sparse";
  }
  return "unknown";
}

inline const char* to_string(mmoe_scope scope) noexcept {
  switch (scope) {
    case MMOE_SCOPE_REQUEST: return "request";
    case MMOE_SCOPE_CANDIDATE: return "candidate";
  }
  return "unknown";
}

// -------------------------------------------------------------- Options ----

/// mmoe_open_options with a fluent builder; converts to the C struct, so it
/// can be passed wherever a `const mmoe_open_options&` is expected.
class OpenOptions {
 public:
  OpenOptions() noexcept : raw_(mmoe_open_options_default()) {}
  explicit OpenOptions(const mmoe_open_options& raw) noexcept : raw_(raw) {}

  OpenOptions& device(mmoe_device device, std::uint32_t ordinal = 0) noexcept {
    raw_.device = device;
    raw_.device_ordinal = ordinal;
    return *this;
  }
  OpenOptions& compute_mode(mmoe_compute_mode mode) noexcept {
    raw_.compute_mode = mode;
    return *this;
  }
  OpenOptions& gpu_precision(mmoe_gpu_precision precision) noexcept {
    raw_.gpu_precision = precision;
    return *this;
  }
  /// Threads each session splits a request's candidates over (CPU).
  OpenOptions& threads(std::uint32_t threads) noexcept {
    raw_.threads = threads;
    return *this;
  }
  OpenOptions& verify_checksums(bool verify = true) noexcept {
    raw_.verify_checksums = verify ? 1u : 0u;
    return *this;
  }

  const mmoe_open_options& c_struct() const noexcept { return raw_; }
  operator const mmoe_open_options&() const noexcept { return raw_; }

 private:
  mmoe_open_options raw_;
};

// --------------------------------------------------------------- Engine ----

/// What a caller needs to know about one input.
struct InputInfo {
  std::string name;
  mmoe_input_kind kind;
  mmoe_scope scope;
  std::size_t dim;
  std::uint32_t index;  ///< its position in the model (what Request takes)
};

/// A loaded model: thread-safe, reloadable, move-only; frees on destruction.
class Engine {
 public:
  /// An empty engine (every call on it throws).
  Engine() noexcept = default;
  /// Adopts `raw` (from mmoe_engine_open); it is freed by this object.
  explicit Engine(mmoe_engine* raw) noexcept : raw_(raw) {}

  static Engine open(const std::string& path,
                     const mmoe_open_options& options = mmoe_open_options_default()) {
    mmoe_engine* raw = nullptr;
    check(mmoe_engine_open(detail::c_str(path, "path"), &options, &raw));
    return Engine(raw);
  }

  Engine(Engine&& other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  Engine& operator=(Engine&& other) noexcept {
    if (this != &other) {
      mmoe_engine_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine() { mmoe_engine_free(raw_); }

  mmoe_engine* get() const noexcept { return raw_; }
  /// Gives up ownership: the caller must mmoe_engine_free the result.
  mmoe_engine* release() noexcept { return std::exchange(raw_, nullptr); }
  explicit operator bool() const noexcept { return raw_ != nullptr; }

  /// Swaps in the model at `path`; on failure the old one keeps serving.
  void reload(const std::string& path) const {
    check(mmoe_engine_reload(raw_, detail::c_str(path, "path")));
  }
  /// Makes every later reload warm up the new model for requests of up to
  /// `max_candidates` candidates (at most 65536) before it serves
  /// (mmoe_engine_set_warm_up); 0 turns it off.
  void set_warm_up(std::size_t max_candidates) const {
    check(mmoe_engine_set_warm_up(raw_, max_candidates));
  }
  std::uint64_t generation() const {
    std::uint64_t out = 0;
    check(mmoe_engine_generation(raw_, &out));
    return out;
  }
  std::uint64_t content_hash() const {
    std::uint64_t out = 0;
    check(mmoe_engine_content_hash(raw_, &out));
    return out;
  }
  std::string model_name() const {
    return detail::text([this](char* buf, std::size_t len, std::size_t* out) {
      return mmoe_engine_model_name(raw_, buf, len, out);
    });
  }

  /// Where the serving model scores: MMOE_DEVICE_CPU or MMOE_DEVICE_CUDA,
  /// never AUTO (an engine opened with AUTO tells here which it got, after
  /// each reload too); device_note() says why, for a log.
  mmoe_device device() const {
    mmoe_device out = MMOE_DEVICE_CPU;
    check(mmoe_engine_device(raw_, &out, nullptr));
    return out;
  }
  /// "cpu", "cuda:0 (device, precision, kernels)" or "cpu (auto: why)".
  std::string device_note() const {
    return detail::text([this](char* buf, std::size_t len, std::size_t* out) {
      return mmoe_engine_device_note(raw_, buf, len, out);
    });
  }

  std::size_t num_tasks() const {
    std::size_t out = 0;
    check(mmoe_engine_num_tasks(raw_, &out));
    return out;
  }
  std::string task_name(std::size_t index) const {
    return detail::text([this, index](char* buf, std::size_t len, std::size_t* out) {
      return mmoe_engine_task_name(raw_, index, buf, len, out);
    });
  }
  /// Every task name, in model order, all of one model even while reloads
  /// land (see one_model()).
  std::vector<std::string> task_names() const {
    return one_model([this] {
      std::vector<std::string> names(num_tasks());
      for (std::size_t i = 0; i < names.size(); ++i) names[i] = task_name(i);
      return names;
    });
  }

  std::size_t num_inputs() const {
    std::size_t out = 0;
    check(mmoe_engine_num_inputs(raw_, &out));
    return out;
  }
  /// Input `index`: its name and its kind, scope and dim from one model
  /// even while reloads land (two C calls; see one_model()).
  InputInfo input(std::size_t index) const {
    return one_model([this, index] { return input_of_the_moment(index); });
  }
  /// Every input, in model order, all of one model even while reloads land
  /// (see one_model()).
  std::vector<InputInfo> inputs() const {
    return one_model([this] {
      const std::size_t n = num_inputs();
      std::vector<InputInfo> all;
      all.reserve(n);
      for (std::size_t i = 0; i < n; ++i) all.push_back(input_of_the_moment(i));
      return all;
    });
  }

  /// Runs `read`, several C calls that each see the engine's model of the
  /// moment, again until no reload landed while it ran, and returns its
  /// result: all of one model. A reload bumps generation() in the same step
  /// as it swaps the model, so an unchanged generation means one model
  /// served every call. An error is rethrown unless a reload explains it (a
  /// task index past a smaller new model).
  template <class Read>
  auto one_model(Read read) const -> decltype(read()) {
    for (;;) {
      const std::uint64_t before = generation();
      try {
        auto value = read();
        if (generation() == before) return value;
      } catch (const Error&) {
        if (generation() == before) throw;
      }
    }
  }

  std::uint32_t input_index(const std::string& name) const {
    std::uint32_t out = 0;
    check(mmoe_engine_input_index(raw_, detail::c_str(name, "input name"), &out));
    return out;
  }

 private:
  /// Input `index` of the engine's model of the moment: two C calls, which a
  /// reload may fall between (callers wrap it in one_model()).
  InputInfo input_of_the_moment(std::size_t index) const {
    mmoe_input_info info{};
    check(mmoe_engine_input_info(raw_, index, &info));
    std::string name = detail::text([this, index](char* buf, std::size_t len, std::size_t* out) {
      return mmoe_engine_input_name(raw_, index, buf, len, out);
    });
    return InputInfo{std::move(name), info.kind, info.scope, info.dim,
                     static_cast<std::uint32_t>(index)};
  }

  mmoe_engine* raw_ = nullptr;
};

// -------------------------------------------------------------- Request ----

/// One request's features, as borrowed views: the arrays must stay alive and
/// unchanged until the last score() call with this request. Setting an input
/// twice replaces its earlier value.
class Request {
 public:
  explicit Request(std::size_t candidates = 0) noexcept : candidates_(candidates) {}

  /// Dense values: `dim` floats (request scope) or `candidates × dim`
  /// row-major (candidate scope); NaN marks a missing value.
  Request& dense(std::uint32_t input, Span<const float> values) {
    mmoe_feature& f = slot(input);
    f.dense = values.data();
    f.dense_len = values.size();
    return *this;
  }

  /// Sparse CSR bags: bag b is ids[offsets[b] .. offsets[b + 1]]; one bag
  /// (two offsets) for request scope, one per candidate otherwise.
  Request& sparse(std::uint32_t input, Span<const std::uint64_t> ids,
                  Span<const std::uint32_t> offsets) {
    mmoe_feature& f = slot(input);
    f.ids = ids.data();
    f.ids_len = ids.size();
    f.offsets = offsets.data();
    f.offsets_len = offsets.size();
    return *this;
  }

  // A Request only borrows: a temporary std::vector or std::array (const or
  // not, in any argument) would dangle once the statement ends, so it is
  // refused at compile time (c-examples/dangling.cpp).
  template <class V, std::enable_if_t<detail::is_owning_temporary<V>::value, int> = 0>
  Request& dense(std::uint32_t, V&&) = delete;
  template <class I, class O,
            std::enable_if_t<detail::is_owning_temporary<I>::value || detail::is_owning_temporary<O>::value, int> = 0>
  Request& sparse(std::uint32_t, I&&, O&&) = delete;

  /// Drops every feature and sets the candidate count (keeps capacity).
  void reset(std::size_t candidates) noexcept {
    candidates_ = candidates;
    features_.clear();
  }

  std::size_t candidates() const noexcept { return candidates_; }
  const std::vector<mmoe_feature>& features() const noexcept { return features_; }

 private:
  mmoe_feature& slot(std::uint32_t input) {
    for (mmoe_feature& f : features_) {
      if (f.input == input) {
        f = mmoe_feature{};
        f.input = input;
        return f;
      }
    }
    mmoe_feature f{};
    f.input = input;
    features_.push_back(f);
    return features_.back();
  }

  std::size_t candidates_;
  std::vector<mmoe_feature> features_;
};

// -------------------------------------------------------------- Session ----

/// Scratch for scoring on one engine: not thread-safe, use one per thread.
/// May outlive its Engine (the library keeps the model alive).
class Session {
 public:
  /// An empty session (every call on it throws).
  Session() noexcept = default;
  explicit Session(const Engine& engine) { check(mmoe_session_new(engine.get(), &raw_)); }
  /// Adopts `raw` (from mmoe_session_new); it is freed by this object.
  explicit Session(mmoe_session* raw) noexcept : raw_(raw) {}

  Session(Session&& other) noexcept : raw_(std::exchange(other.raw_, nullptr)) {}
  Session& operator=(Session&& other) noexcept {
    if (this != &other) {
      mmoe_session_free(raw_);
      raw_ = std::exchange(other.raw_, nullptr);
    }
    return *this;
  }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  ~Session() { mmoe_session_free(raw_); }

  mmoe_session* get() const noexcept { return raw_; }
  /// Gives up ownership: the caller must mmoe_session_free the result.
  mmoe_session* release() noexcept { return std::exchange(raw_, nullptr); }
  explicit operator bool() const noexcept { return raw_ != nullptr; }

  /// Prepares the session for requests of up to `max_candidates`
  /// candidates, at most 65536 (mmoe_session_warm_up): call it before
  /// traffic, so the first requests do not pay for scratch memory or GPU
  /// graph capture.
  void warm_up(std::size_t max_candidates) { check(mmoe_session_warm_up(raw_, max_candidates)); }

  /// Scores `request` on the engine's current model. `logits` and
  /// `probabilities` each take `candidates × tasks` floats, row-major
  /// (candidate, task), or are empty when not wanted. Nothing is written
  /// unless the call succeeds.
  void score(const Request& request, Span<float> logits, Span<float> probabilities = {}) {
    const std::vector<mmoe_feature>& f = request.features();
    check(mmoe_session_score(raw_, request.candidates(), f.data(), f.size(), logits.data(),
                             logits.size(), probabilities.data(), probabilities.size()));
  }

  /// The logits, `candidates × num_tasks` row-major; pass
  /// engine.num_tasks() (a session does not hold its engine, so that it may
  /// outlive it).
  std::vector<float> score(const Request& request, std::size_t num_tasks) {
    // mmoe_session_score's own limit, checked before the logits are
    // allocated (a caller's bad count would otherwise ask for gigabytes).
    constexpr std::size_t max_candidates = 16777216;
    if (request.candidates() > max_candidates) {
      throw Error(MMOE_STATUS_REQUEST, std::to_string(request.candidates()) +
                                           " candidates, above the limit of 16777216 per request");
    }
    if (num_tasks != 0 && request.candidates() > static_cast<std::size_t>(-1) / num_tasks) {
      throw Error(MMOE_STATUS_ARGUMENT, "candidates × tasks overflows size_t");
    }
    std::vector<float> logits(request.candidates() * num_tasks);
    score(request, logits);
    return logits;
  }

 private:
  mmoe_session* raw_ = nullptr;
};

}  // namespace mmoe

#endif  // MMOE_HPP
