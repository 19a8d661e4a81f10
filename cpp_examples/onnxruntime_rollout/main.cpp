// Batched imagined rollouts of an exported MrCoM model with the ONNX Runtime C++ API.
//
// usage: mrcom_ort_rollout EXPORT_DIR INPUT.mrcb OUTPUT.mrcb [--fused] [--repeat N] [--threads N]
// INPUT holds prompt_obs (B,T+1,D), prompt_act (B,T,A), prompt_rew (B,T), reset_noise_u/h (B,T-m+1,·),
// actions (B,H,A), noise_u/h (B,H,·) — written by Python (mrcom_export.bundle). OUTPUT gets obs (B,H,D) and
// reward (B,H), which must match the Python runtime's rollout with the same noise. The H imagined steps are H
// `step` calls, or with --fused one call of `rollout` (an ONNX Loop over the step: any H); --repeat N imagines
// N times from the same primed state and prints the median time (the output is the first run's). When the
// export has an ensemble (`ensemble.onnx`), each `step` call is preceded by one `ensemble` call on the same
// state and action, and OUTPUT also gets its disagreement (B,H); not with --fused (the Loop keeps its states).
#include <onnxruntime_cxx_api.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "../common/bundle.hpp"

using mrcom::Array;

class Graph {
 public:
  Graph(Ort::Env& env, const std::string& path, const Ort::SessionOptions& options)
      : session_(env, path.c_str(), options) {
    Ort::AllocatorWithDefaultOptions alloc;
    for (size_t i = 0; i < session_.GetInputCount(); ++i)
      inputs_.push_back(session_.GetInputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < session_.GetOutputCount(); ++i)
      outputs_.push_back(session_.GetOutputNameAllocated(i, alloc).get());
  }

  // Runs the graph on `args` (in the graph's input order); returns the outputs as arrays.
  std::vector<Array> operator()(std::vector<const Array*> args) {
    if (args.size() != inputs_.size()) throw std::runtime_error("wrong number of inputs");
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values;
    for (const Array* a : args)
      values.push_back(Ort::Value::CreateTensor<float>(mem, const_cast<float*>(a->data.data()), a->data.size(),
                                                       a->shape.data(), a->shape.size()));
    std::vector<const char*> in, out;
    for (auto& s : inputs_) in.push_back(s.c_str());
    for (auto& s : outputs_) out.push_back(s.c_str());
    auto results = session_.Run(Ort::RunOptions{nullptr}, in.data(), values.data(), values.size(), out.data(),
                                out.size());
    std::vector<Array> arrays;
    for (auto& r : results) {
      Array a;
      a.shape = r.GetTensorTypeAndShapeInfo().GetShape();
      const float* p = r.GetTensorData<float>();
      a.data.assign(p, p + r.GetTensorTypeAndShapeInfo().GetElementCount());
      arrays.push_back(std::move(a));
    }
    return arrays;
  }

 private:
  Ort::Session session_;
  std::vector<std::string> inputs_, outputs_;
};

static Array zeros(std::vector<int64_t> shape) {
  Array a;
  a.shape = shape;
  int64_t n = 1;
  for (auto d : shape) n *= d;
  a.data.assign(n, 0.0f);
  return a;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " EXPORT_DIR INPUT.mrcb OUTPUT.mrcb [--fused] [--repeat N] [--threads N]\n";
    return 2;
  }
  try {
    const std::string dir = argv[1];
    const mrcom::Options opt = mrcom::parse_options(argc, argv, 4);
    auto in = mrcom::read_bundle(argv[2]);
    const int64_t m = mrcom::manifest_int(dir, "context_len");
    const Array &obs = in.at("prompt_obs"), &act = in.at("prompt_act"), &rew = in.at("prompt_rew");
    const int64_t B = obs.dim(0), T = act.dim(1), H = in.at("actions").dim(1), D = obs.dim(2);

    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "mrcom");
    Ort::SessionOptions options;
    if (opt.threads) options.SetIntraOpNumThreads(opt.threads);
    Graph prime(env, dir + "/prime.onnx", options), observe(env, dir + "/observe.onnx", options);
    Graph imagine(env, dir + (opt.fused ? "/rollout.onnx" : "/step.onnx"), options);
    // The ensemble (exported for a model with one): u, d, h, action -> ensemble_obs, ensemble_reward, disagreement.
    std::unique_ptr<Graph> ensemble;
    if (!opt.fused && std::filesystem::exists(dir + "/ensemble.onnx"))
      ensemble = std::make_unique<Graph>(env, dir + "/ensemble.onnx", options);

    // prime: the first m prompt steps fill the context FIFO, the posterior observes o_m; observe: each later
    // prompt step's token enters the FIFO and the posterior observes the next observation.
    Array o_head = obs.head(m + 1), a_head = act.head(m), r_head = rew.head(m);
    Array nu0 = in.at("reset_noise_u").step(0), nh0 = in.at("reset_noise_h").step(0);
    auto s = prime({&o_head, &a_head, &r_head, &nu0, &nh0});  // u, d, h, keys, values
    for (int64_t k = m + 1; k <= T; ++k) {
      Array po = obs.step(k - 1), pa = act.step(k - 1), pr = rew.step(k - 1), o = obs.step(k),
            nu = in.at("reset_noise_u").step(k - m), nh = in.at("reset_noise_h").step(k - m);
      s = observe({&s[0], &s[1], &s[2], &s[3], &s[4], &po, &pa, &pr, &o, &nu, &nh});
    }
    const Array first_obs = obs.step(T);

    // Imagine H steps from the primed state: reward of the action, its token into the FIFO, one prior step
    // (and before it, with an ensemble, how far its members part on the same state and action).
    auto imagine_all = [&](Array& out_obs, Array& out_rew, Array& out_dis) {
      if (opt.fused) {  // u, d, h, obs, keys, values, actions, noise_u, noise_h -> obs_seq, reward_seq, ...
        auto r = imagine({&s[0], &s[1], &s[2], &first_obs, &s[3], &s[4], &in.at("actions"), &in.at("noise_u"),
                          &in.at("noise_h")});
        out_obs = std::move(r[0]), out_rew = std::move(r[1]);
        return;
      }
      Array u = s[0], d = s[1], h = s[2], last = first_obs, keys = s[3], values = s[4];
      out_obs = zeros({B, H, D}), out_rew = zeros({B, H});
      if (ensemble) out_dis = zeros({B, H});
      for (int64_t t = 0; t < H; ++t) {
        Array a = in.at("actions").step(t), nu = in.at("noise_u").step(t), nh = in.at("noise_h").step(t);
        if (ensemble) {
          auto e = (*ensemble)({&u, &d, &h, &a});
          for (int64_t b = 0; b < B; ++b) out_dis.data[b * H + t] = e[2].data[b];
        }
        auto r = imagine({&u, &d, &h, &last, &a, &keys, &values, &nu, &nh});
        u = r[0], d = r[1], h = r[2], last = r[3], keys = r[5], values = r[6];
        for (int64_t b = 0; b < B; ++b) {
          std::copy(&last.data[b * D], &last.data[(b + 1) * D], &out_obs.data[(b * H + t) * D]);
          out_rew.data[b * H + t] = r[4].data[b];
        }
      }
    };
    Array out_obs, out_rew, out_dis, scratch_obs, scratch_rew, scratch_dis;
    std::vector<double> times;
    for (int i = 0; i < opt.repeat; ++i) {
      const auto start = std::chrono::steady_clock::now();
      imagine_all(i ? scratch_obs : out_obs, i ? scratch_rew : out_rew, i ? scratch_dis : out_dis);
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    mrcom::Bundle result{{"obs", out_obs}, {"reward", out_rew}};
    if (ensemble) result["disagreement"] = out_dis;
    mrcom::write_bundle(argv[3], result);
    auto mean = [](const Array& a) { double t = 0; for (float x : a.data) t += x; return t / a.data.size(); };
    std::cout << "onnxruntime" << (opt.fused ? " (fused)" : "") << ": " << B << " rollouts x " << H << " steps in "
              << mrcom::median(times) << " ms (median of " << opt.repeat << "); mean reward " << mean(out_rew);
    if (ensemble) std::cout << "; mean disagreement " << mean(out_dis);
    std::cout << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
