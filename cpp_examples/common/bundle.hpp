// Reader/writer for the MrCoM array bundle (see export/bundle.py) and a tiny manifest field reader.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mrcom {

struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;
  int64_t dim(size_t i) const { return shape.at(i); }
  // Copy of [:, k] of a (B, T, X) array as a contiguous (B, X) array.
  Array step(int64_t k) const {
    Array out;
    const int64_t B = shape.at(0), T = shape.at(1);
    const int64_t X = shape.size() > 2 ? shape[2] : 1;
    if (k < 0 || k >= T) throw std::out_of_range("time index out of range");
    out.shape = shape.size() > 2 ? std::vector<int64_t>{B, X} : std::vector<int64_t>{B};
    out.data.resize(B * X);
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(&out.data[b * X], &data[(b * T + k) * X], X * sizeof(float));
    return out;
  }
  // Copy of [:, :k] of a (B, T, ...) array.
  Array head(int64_t k) const {
    Array out;
    const int64_t B = shape.at(0), T = shape.at(1);
    int64_t X = 1;
    for (size_t i = 2; i < shape.size(); ++i) X *= shape[i];
    out.shape = shape;
    out.shape[1] = k;
    out.data.resize(B * k * X);
    for (int64_t b = 0; b < B; ++b)
      std::memcpy(&out.data[b * k * X], &data[b * T * X], k * X * sizeof(float));
    return out;
  }
};

using Bundle = std::map<std::string, Array>;

inline Bundle read_bundle(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[4];
  uint32_t version = 0, count = 0;
  f.read(magic, 4);
  f.read(reinterpret_cast<char*>(&version), 4);
  f.read(reinterpret_cast<char*>(&count), 4);
  if (std::string(magic, 4) != "MRCB" || version != 1) throw std::runtime_error(path + " is not an MRCB v1 bundle");
  Bundle out;
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t n = 0, ndim = 0;
    f.read(reinterpret_cast<char*>(&n), 4);
    std::string name(n, '\0');
    f.read(name.data(), n);
    f.read(reinterpret_cast<char*>(&ndim), 4);
    Array a;
    a.shape.resize(ndim);
    f.read(reinterpret_cast<char*>(a.shape.data()), 8 * ndim);
    int64_t size = 1;
    for (auto d : a.shape) size *= d;
    a.data.resize(size);
    f.read(reinterpret_cast<char*>(a.data.data()), 4 * size);
    if (!f) throw std::runtime_error(path + " is truncated");
    out[name] = std::move(a);
  }
  return out;
}

inline void write_bundle(const std::string& path, const Bundle& arrays) {
  std::ofstream f(path, std::ios::binary);
  const uint32_t version = 1, count = static_cast<uint32_t>(arrays.size());
  f.write("MRCB", 4);
  f.write(reinterpret_cast<const char*>(&version), 4);
  f.write(reinterpret_cast<const char*>(&count), 4);
  for (const auto& [name, a] : arrays) {
    const uint32_t n = static_cast<uint32_t>(name.size()), ndim = static_cast<uint32_t>(a.shape.size());
    f.write(reinterpret_cast<const char*>(&n), 4);
    f.write(name.data(), n);
    f.write(reinterpret_cast<const char*>(&ndim), 4);
    f.write(reinterpret_cast<const char*>(a.shape.data()), 8 * ndim);
    f.write(reinterpret_cast<const char*>(a.data.data()), 4 * a.data.size());
  }
}

// The integer after `"key":` in manifest.json (first occurrence after `after`, if given). Enough for the
// flat numeric fields the examples need; a real application would use a JSON library.
inline int64_t manifest_int(const std::string& export_dir, const std::string& key, const std::string& after = "") {
  std::ifstream f(export_dir + "/manifest.json");
  if (!f) throw std::runtime_error("no manifest.json in " + export_dir);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  size_t start = after.empty() ? 0 : text.find("\"" + after + "\"");
  if (start == std::string::npos) throw std::runtime_error("manifest has no " + after);
  size_t pos = text.find("\"" + key + "\":", start);
  if (pos == std::string::npos) throw std::runtime_error("manifest has no " + key);
  return std::stoll(text.substr(pos + key.size() + 3));
}

// Options after EXPORT_DIR INPUT OUTPUT: --fused (the H-step `rollout` graph in one call instead of H `step`
// calls), --repeat N (imagine N times from the same primed state and report the median time), --threads N.
struct Options {
  bool fused = false;
  int repeat = 1, threads = 0;  // threads 0: the engine's default
};

inline Options parse_options(int argc, char** argv, int first) {
  Options o;
  for (int i = first; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--fused") {
      o.fused = true;
    } else if ((a == "--repeat" || a == "--threads") && i + 1 < argc) {
      const int v = std::stoi(argv[++i]);
      if (v < (a == "--repeat" ? 1 : 0)) throw std::invalid_argument(a + " out of range");
      (a == "--repeat" ? o.repeat : o.threads) = v;
    } else {
      throw std::invalid_argument("unknown option " + a + " (use --fused, --repeat N, --threads N)");
    }
  }
  return o;
}

// Median of `times` (milliseconds).
inline double median(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  return n % 2 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
}

}  // namespace mrcom
