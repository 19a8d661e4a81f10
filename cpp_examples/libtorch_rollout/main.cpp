// Batched imagined rollouts of an exported MrCoM model with LibTorch (TorchScript graphs).
//
// usage: mrcom_libtorch_rollout EXPORT_DIR INPUT.mrcb OUTPUT.mrcb [--fused] [--repeat N] [--threads N]
// Same inputs, outputs and options as the ONNX Runtime example (see ../onnxruntime_rollout/main.cpp); --fused
// runs `rollout.pt` (a scripted loop over the traced step) in one call. With `ensemble.pt` (a model with an
// ensemble), each `step.pt` call is preceded by one `ensemble.pt` call on the same state and action and OUTPUT
// also gets its disagreement (B,H); not with --fused.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <chrono>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "../common/bundle.hpp"

static torch::Tensor to_tensor(const mrcom::Array& a) {
  return torch::from_blob(const_cast<float*>(a.data.data()), a.shape, torch::kFloat32).clone();
}

static mrcom::Array to_array(const torch::Tensor& t) {
  auto c = t.contiguous().to(torch::kFloat32);
  mrcom::Array a;
  a.shape.assign(c.sizes().begin(), c.sizes().end());
  a.data.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  return a;
}

static std::vector<torch::Tensor> call(torch::jit::script::Module& graph, std::vector<torch::Tensor> args) {
  std::vector<torch::jit::IValue> inputs(args.begin(), args.end());
  auto out = graph.forward(inputs);
  std::vector<torch::Tensor> tensors;
  if (out.isTuple()) {
    for (auto& v : out.toTuple()->elements()) tensors.push_back(v.toTensor());
  } else {
    tensors.push_back(out.toTensor());
  }
  return tensors;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " EXPORT_DIR INPUT.mrcb OUTPUT.mrcb [--fused] [--repeat N] [--threads N]\n";
    return 2;
  }
  try {
    torch::NoGradGuard no_grad;
    const std::string dir = argv[1];
    const mrcom::Options opt = mrcom::parse_options(argc, argv, 4);
    if (opt.threads) at::set_num_threads(opt.threads);
    auto in = mrcom::read_bundle(argv[2]);
    const int64_t m = mrcom::manifest_int(dir, "context_len");
    auto obs = to_tensor(in.at("prompt_obs")), act = to_tensor(in.at("prompt_act")), rew = to_tensor(in.at("prompt_rew"));
    auto reset_u = to_tensor(in.at("reset_noise_u")), reset_h = to_tensor(in.at("reset_noise_h"));
    auto actions = to_tensor(in.at("actions")), noise_u = to_tensor(in.at("noise_u")), noise_h = to_tensor(in.at("noise_h"));
    const int64_t B = obs.size(0), T = act.size(1), H = actions.size(1);

    auto prime = torch::jit::load(dir + "/prime.pt");
    auto observe = torch::jit::load(dir + "/observe.pt");
    auto imagine = torch::jit::load(dir + (opt.fused ? "/rollout.pt" : "/step.pt"));
    // The ensemble (exported for a model with one): u, d, h, action -> ensemble_obs, ensemble_reward, disagreement.
    std::optional<torch::jit::script::Module> ensemble;
    if (!opt.fused && std::filesystem::exists(dir + "/ensemble.pt"))
      ensemble = torch::jit::load(dir + "/ensemble.pt");

    // prime: the first m prompt steps fill the context FIFO, the posterior observes o_m; observe: each later
    // prompt step's token enters the FIFO and the posterior observes the next observation.
    using torch::indexing::Slice;
    auto s = call(prime, {obs.index({Slice(), Slice(0, m + 1)}), act.index({Slice(), Slice(0, m)}),
                          rew.index({Slice(), Slice(0, m)}), reset_u.select(1, 0), reset_h.select(1, 0)});
    for (int64_t k = m + 1; k <= T; ++k)
      s = call(observe, {s[0], s[1], s[2], s[3], s[4], obs.select(1, k - 1), act.select(1, k - 1),
                         rew.select(1, k - 1), obs.select(1, k), reset_u.select(1, k - m), reset_h.select(1, k - m)});
    const auto first_obs = obs.select(1, T);

    // Imagine H steps from the primed state: reward of the action, its token into the FIFO, one prior step
    // (and before it, with an ensemble, how far its members part on the same state and action).
    struct Imagined {
      torch::Tensor obs, reward, disagreement;  // disagreement: undefined without an ensemble
    };
    auto imagine_all = [&]() -> Imagined {
      if (opt.fused) {  // -> obs_seq, reward_seq, u, d, h, keys, values
        auto r = call(imagine, {s[0], s[1], s[2], first_obs, s[3], s[4], actions, noise_u, noise_h});
        return {r[0], r[1], {}};
      }
      auto u = s[0], d = s[1], h = s[2], last = first_obs, keys = s[3], values = s[4];
      std::vector<torch::Tensor> out_obs, out_rew, out_dis;
      for (int64_t t = 0; t < H; ++t) {
        if (ensemble) out_dis.push_back(call(*ensemble, {u, d, h, actions.select(1, t)})[2]);
        auto r = call(imagine, {u, d, h, last, actions.select(1, t), keys, values, noise_u.select(1, t),
                                noise_h.select(1, t)});
        u = r[0], d = r[1], h = r[2], last = r[3], keys = r[5], values = r[6];
        out_obs.push_back(last);
        out_rew.push_back(r[4]);
      }
      return {torch::stack(out_obs, 1), torch::stack(out_rew, 1),
              ensemble ? torch::stack(out_dis, 1) : torch::Tensor()};
    };
    Imagined result;
    std::vector<double> times;
    for (int i = 0; i < opt.repeat; ++i) {
      const auto start = std::chrono::steady_clock::now();
      auto r = imagine_all();
      times.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
      if (!i) result = r;
    }
    mrcom::Bundle bundle{{"obs", to_array(result.obs)}, {"reward", to_array(result.reward)}};
    if (result.disagreement.defined()) bundle["disagreement"] = to_array(result.disagreement);
    mrcom::write_bundle(argv[3], bundle);
    std::cout << "libtorch" << (opt.fused ? " (fused)" : "") << ": " << B << " rollouts x " << H << " steps in "
              << mrcom::median(times) << " ms (median of " << opt.repeat << "); mean reward "
              << result.reward.mean().item<float>();
    if (result.disagreement.defined())
      std::cout << "; mean disagreement " << result.disagreement.mean().item<float>();
    std::cout << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
