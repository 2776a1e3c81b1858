#include "data/synthesis.h"

#include <fmt/format.h>

#include <opencv2/imgproc.hpp>
#include <opencv2/photo.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <numbers>

#include "anomaly/position.h"
#include "io/error.h"

namespace iadgpt::data {
namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) {
  if (hi <= lo) return lo;
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

int uniform_int(std::mt19937_64& rng, int lo, int hi) {  // inclusive
  if (hi <= lo) return lo;
  return std::uniform_int_distribution<int>(lo, hi)(rng);
}

void check_rgb8(const cv::Mat& img, std::string_view what) {
  if (img.empty() || img.type() != CV_8UC3)
    throw InputError(fmt::format("anomaly synthesis: {} must be a non-empty RGB8 image", what));
  if (img.rows < 16 || img.cols < 16)
    throw InputError(fmt::format("anomaly synthesis: {} is {}x{}, expected at least 16x16", what, img.cols, img.rows));
}

cv::Mat resized_to(const cv::Mat& img, cv::Size size) {
  if (img.size() == size) return img;
  cv::Mat out;
  cv::resize(img, out, size, 0, 0, cv::INTER_LINEAR);
  return out;
}

torch::Tensor to_tensor(const cv::Mat& m, torch::Dtype dtype) {  // single channel, contiguous copy
  cv::Mat c = m.isContinuous() ? m : m.clone();
  return torch::from_blob(c.data, {c.rows, c.cols}, dtype).clone();
}

cv::Mat object_mask_mat(const cv::Mat& rgb, const NsaClass& cls) {
  cv::Mat ones(rgb.size(), CV_8U, cv::Scalar(1));
  if (!cls.plain_background) return ones;
  // Border colour: per-channel median of the 1-pixel frame (robust to an object touching the edge).
  std::array<std::vector<uint8_t>, 3> border;
  auto take = [&](int y, int x) {
    const auto& p = rgb.at<cv::Vec3b>(y, x);
    for (int c = 0; c < 3; ++c) border[c].push_back(p[c]);
  };
  for (int x = 0; x < rgb.cols; ++x) take(0, x), take(rgb.rows - 1, x);
  for (int y = 1; y + 1 < rgb.rows; ++y) take(y, 0), take(y, rgb.cols - 1);
  cv::Vec3f colour;
  for (int c = 0; c < 3; ++c) {
    auto& v = border[c];
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    colour[c] = v[v.size() / 2];
  }
  cv::Mat f, diff;
  rgb.convertTo(f, CV_32FC3);
  cv::absdiff(f, cv::Scalar(colour[0], colour[1], colour[2]), diff);
  cv::Mat mean_diff;
  cv::transform(diff, mean_diff, cv::Matx13f(1.f / 3, 1.f / 3, 1.f / 3));
  cv::Mat mask = mean_diff > cls.background_tolerance;  // 0/255
  // Noise and thin shadows out, holes in the object closed.
  const auto kernel = cv::getStructuringElement(cv::MORPH_ELLIPSE, {5, 5});
  cv::morphologyEx(mask, mask, cv::MORPH_OPEN, kernel);
  cv::morphologyEx(mask, mask, cv::MORPH_CLOSE, kernel);
  // A threshold that leaves almost nothing means the background was not plain after all.
  if (cv::countNonZero(mask) < 0.05 * rgb.total()) return ones;
  return mask / 255;
}

double fraction_on(const cv::Mat& object01, const cv::Rect& r) { return cv::mean(object01(r))[0]; }

struct Placement {
  cv::Rect from, to;  // `to` is the resized patch's rectangle in the target
};

Placement place_patch(const cv::Mat& obj_source, const cv::Mat& obj_target, std::mt19937_64& rng,
                      const NsaOptions& o) {
  const int W = obj_target.cols, H = obj_target.rows;
  Placement p;
  for (int t = 0; t < std::max(1, o.max_tries); ++t) {
    const int pw = std::clamp(static_cast<int>(std::lround(uniform(rng, o.cls.min_width, o.cls.max_width) * W)), 4, W - 4);
    const int ph = std::clamp(static_cast<int>(std::lround(uniform(rng, o.cls.min_height, o.cls.max_height) * H)), 4, H - 4);
    const double s = uniform(rng, o.min_scale, o.max_scale);
    // A 1-pixel margin: seamlessClone needs the whole region (and its boundary) inside the image.
    const int dw = std::clamp(static_cast<int>(std::lround(pw * s)), 4, W - 4);
    const int dh = std::clamp(static_cast<int>(std::lround(ph * s)), 4, H - 4);
    p.from = cv::Rect(uniform_int(rng, 0, W - pw), uniform_int(rng, 0, H - ph), pw, ph);
    p.to = cv::Rect(uniform_int(rng, 1, W - 1 - dw), uniform_int(rng, 1, H - 1 - dh), dw, dh);
    if (fraction_on(obj_source, p.from) >= o.min_overlap && fraction_on(obj_target, p.to) >= o.min_overlap) break;
  }
  return p;  // after max_tries the last candidate is used (an object smaller than the overlap allows)
}

SyntheticSample nsa_once(const cv::Mat& target, const cv::Mat& source, const cv::Mat& obj_t, const cv::Mat& obj_s,
                         std::mt19937_64& rng, const NsaOptions& o) {
  SyntheticSample out;
  cv::Mat img = target.clone();
  cv::Mat region(target.size(), CV_8U, cv::Scalar(0)), seams(target.size(), CV_8U, cv::Scalar(0));
  const int n = uniform_int(rng, o.cls.min_patches, o.cls.max_patches);
  for (int i = 0; i < n; ++i) {
    const auto p = place_patch(obj_s, obj_t, rng, o);
    cv::Mat patch;
    cv::resize(source(p.from), patch, p.to.size(), 0, 0, cv::INTER_LINEAR);
    cv::Mat patch_mask(p.to.size(), CV_8U, cv::Scalar(255));
    // seamlessClone drops the mask's outer 1-pixel frame and centres the rest on `centre`:
    // choose the centre so the blended pixels are exactly p.to shrunk by 1.
    const cv::Point centre(p.to.x + 1 + (p.to.width - 2) / 2, p.to.y + 1 + (p.to.height - 2) / 2);
    cv::Mat blended;
    cv::seamlessClone(patch, img, patch_mask, centre, blended, cv::NORMAL_CLONE);
    img = blended;
    region(p.to).setTo(1);
    // The seam: a ring of `seam` pixels along the pasted rectangle's border.
    seams(p.to).setTo(1);
    const int s = std::min({o.seam, (p.to.width - 1) / 2, (p.to.height - 1) / 2});
    if (s >= 0) seams(cv::Rect(p.to.x + s, p.to.y + s, p.to.width - 2 * s, p.to.height - 2 * s)).setTo(0);
    out.pasted.push_back(p.to);
  }
  // Soft label: logistic of the blended change in intensity (mean over channels, 0..255).
  cv::Mat f_img, f_tgt, diff, change;
  img.convertTo(f_img, CV_32FC3);
  target.convertTo(f_tgt, CV_32FC3);
  cv::absdiff(f_img, f_tgt, diff);
  cv::transform(diff, change, cv::Matx13f(1.f / 3, 1.f / 3, 1.f / 3));
  cv::Mat soft(target.size(), CV_32F);
  for (int y = 0; y < soft.rows; ++y) {
    const float* c = change.ptr<float>(y);
    const uint8_t* r = region.ptr<uint8_t>(y);
    const uint8_t* s = seams.ptr<uint8_t>(y);
    float* o_ = soft.ptr<float>(y);
    for (int x = 0; x < soft.cols; ++x)
      o_[x] = (r[x] && !s[x]) ? static_cast<float>(1.0 / (1.0 + std::exp(-o.k * (c[x] - o.x0)))) : 0.f;
  }
  out.image = img;
  out.soft = to_tensor(soft, torch::kFloat32);
  out.mask = (out.soft > kMaskThreshold).to(torch::kUInt8);
  return out;
}

float fade(float t) { return t * t * t * (t * (t * 6 - 15) + 10); }

}  // namespace

SynthesisMethod parse_synthesis_method(std::string_view name) {
  if (name == "nsa") return SynthesisMethod::Nsa;
  if (name == "cutpaste") return SynthesisMethod::CutPaste;
  if (name == "perlin") return SynthesisMethod::Perlin;
  throw InputError(fmt::format("unknown synthesis method '{}' (expected nsa, cutpaste or perlin)", name));
}

std::string_view synthesis_method_name(SynthesisMethod method) {
  switch (method) {
    case SynthesisMethod::Nsa: return "nsa";
    case SynthesisMethod::CutPaste: return "cutpaste";
    case SynthesisMethod::Perlin: return "perlin";
  }
  return "?";
}

NsaClass nsa_class(std::string_view category) {
  // {min_w, max_w, min_h, max_h, min_patches, max_patches, plain_background, tolerance}.
  // Elongated objects get narrow bounds across their axis (capsule and pill lie horizontally,
  // screw is thin, toothbrush and zipper stand vertically); textures and the classes whose
  // object fills the frame or sits on a textured board have no plain background.
  struct Row {
    std::string_view name;
    NsaClass cls;
  };
  static const std::array<Row, 15> table{{
      {"bottle", {0.03, 0.40, 0.03, 0.40, 1, 2, true, 20}},
      {"cable", {0.05, 0.40, 0.05, 0.40, 1, 2, false, 20}},
      {"capsule", {0.03, 0.40, 0.03, 0.15, 1, 2, true, 20}},
      {"carpet", {0.03, 0.40, 0.03, 0.40, 1, 2, false, 20}},
      {"grid", {0.03, 0.40, 0.03, 0.40, 1, 2, false, 20}},
      {"hazelnut", {0.03, 0.35, 0.03, 0.35, 1, 2, true, 20}},
      {"leather", {0.03, 0.40, 0.03, 0.40, 1, 2, false, 20}},
      {"metal_nut", {0.03, 0.40, 0.03, 0.40, 1, 2, true, 20}},
      {"pill", {0.03, 0.40, 0.03, 0.20, 1, 2, true, 20}},
      {"screw", {0.03, 0.12, 0.03, 0.12, 1, 2, true, 20}},
      {"tile", {0.03, 0.40, 0.03, 0.40, 1, 2, false, 20}},
      {"toothbrush", {0.03, 0.20, 0.03, 0.40, 1, 2, true, 20}},
      {"transistor", {0.03, 0.40, 0.03, 0.40, 1, 2, false, 20}},
      {"wood", {0.03, 0.40, 0.03, 0.40, 1, 2, false, 20}},
      {"zipper", {0.03, 0.20, 0.03, 0.40, 1, 2, false, 20}},
  }};
  for (const auto& row : table)
    if (row.name == category) return row.cls;
  return {};
}

torch::Tensor object_mask(const cv::Mat& rgb, const NsaClass& cls) {
  check_rgb8(rgb, "image");
  return to_tensor(object_mask_mat(rgb, cls), torch::kUInt8);
}

SyntheticSample nsa(const cv::Mat& target, const cv::Mat& source, std::mt19937_64& rng, const NsaOptions& options) {
  check_rgb8(target, "target");
  check_rgb8(source, "source");
  const cv::Mat src = resized_to(source, target.size());
  const cv::Mat obj_t = object_mask_mat(target, options.cls), obj_s = object_mask_mat(src, options.cls);
  SyntheticSample out;
  // A patch much like what it covers can blend in below the label threshold: draw again.
  for (int r = 0; r <= std::max(0, options.max_restarts); ++r) {
    out = nsa_once(target, src, obj_t, obj_s, rng, options);
    if (out.mask.any().item<bool>()) break;
  }
  return out;
}

cv::Mat perlin_noise(int height, int width, int res_y, int res_x, std::mt19937_64& rng) {
  if (height < 1 || width < 1 || res_y < 1 || res_x < 1)
    throw std::invalid_argument(fmt::format("perlin_noise: bad size {}x{} or grid {}x{}", width, height, res_x, res_y));
  // Random unit gradients on the (res_y + 1) × (res_x + 1) lattice.
  std::vector<cv::Vec2f> grad((res_y + 1) * (res_x + 1));
  for (auto& g : grad) {
    const double a = uniform(rng, 0.0, 2.0 * std::numbers::pi);
    g = {static_cast<float>(std::cos(a)), static_cast<float>(std::sin(a))};
  }
  auto g = [&](int gy, int gx) { return grad[gy * (res_x + 1) + gx]; };
  cv::Mat noise(height, width, CV_32F);
  for (int y = 0; y < height; ++y) {
    const float fy = static_cast<float>(y) * res_y / height;
    const int cy = static_cast<int>(fy);
    const float ty = fy - cy;
    float* row = noise.ptr<float>(y);
    for (int x = 0; x < width; ++x) {
      const float fx = static_cast<float>(x) * res_x / width;
      const int cx = static_cast<int>(fx);
      const float tx = fx - cx;
      auto dot = [&](int oy, int ox) {
        const auto v = g(cy + oy, cx + ox);
        return v[0] * (tx - ox) + v[1] * (ty - oy);
      };
      const float u = fade(tx), v = fade(ty);
      const float top = dot(0, 0) + u * (dot(0, 1) - dot(0, 0));
      const float bottom = dot(1, 0) + u * (dot(1, 1) - dot(1, 0));
      // √2 scales the 2-D gradient noise to about [-1, 1] (as DRAEM), so the threshold means the same.
      row[x] = std::numbers::sqrt2_v<float> * (top + v * (bottom - top));
    }
  }
  return noise;
}

SyntheticSample perlin(const cv::Mat& target, const cv::Mat& texture, std::mt19937_64& rng,
                       const PerlinOptions& options, double* beta_out) {
  check_rgb8(target, "target");
  check_rgb8(texture, "texture");
  if (!(0.0 <= options.min_beta && options.min_beta <= options.max_beta && options.max_beta <= 1.0))
    throw InputError(fmt::format("perlin: beta bounds [{}, {}] must lie in [0, 1]", options.min_beta, options.max_beta));
  const int H = target.rows, W = target.cols;
  cv::Mat m;
  for (int r = 0; r <= std::max(0, options.max_restarts); ++r) {
    const int ry = 1 << uniform_int(rng, options.min_scale_log2, options.max_scale_log2);
    const int rx = 1 << uniform_int(rng, options.min_scale_log2, options.max_scale_log2);
    m = perlin_noise(H, W, ry, rx, rng) > options.threshold;  // 0/255
    if (cv::countNonZero(m) > 0) break;
  }
  const cv::Mat tex = resized_to(texture, target.size());
  const double beta = uniform(rng, options.min_beta, options.max_beta);
  if (beta_out) *beta_out = beta;
  SyntheticSample out;
  out.image = target.clone();
  for (int y = 0; y < H; ++y) {
    const uint8_t* mm = m.ptr<uint8_t>(y);
    const auto* t = tex.ptr<cv::Vec3b>(y);
    auto* o = out.image.ptr<cv::Vec3b>(y);
    for (int x = 0; x < W; ++x) {
      if (!mm[x]) continue;  // outside the mask the image is left bit-exact
      for (int c = 0; c < 3; ++c) o[x][c] = cv::saturate_cast<uint8_t>((1.0 - beta) * t[x][c] + beta * o[x][c]);
    }
  }
  out.mask = to_tensor(m / 255, torch::kUInt8);
  out.soft = out.mask.to(torch::kFloat32);
  return out;
}

SyntheticSample synthesize(SynthesisMethod method, const cv::Mat& normal, std::span<const cv::Mat> other_normals,
                           std::span<const cv::Mat> textures, std::mt19937_64& rng, const SynthesisOptions& options) {
  auto pick = [&](std::span<const cv::Mat> list) -> const cv::Mat& {
    return list[static_cast<size_t>(uniform_int(rng, 0, static_cast<int>(list.size()) - 1))];
  };
  switch (method) {
    case SynthesisMethod::Nsa:
      if (other_normals.empty()) throw InputError("NSA needs at least one other normal image of the class");
      return nsa(normal, pick(other_normals), rng, options.nsa);
    case SynthesisMethod::CutPaste:
      return cutpaste(normal, other_normals.empty() ? normal : pick(other_normals), rng, options.cutpaste);
    case SynthesisMethod::Perlin:
      if (textures.empty()) throw InputError("Perlin synthesis needs at least one texture image");
      return perlin(normal, pick(textures), rng, options.perlin);
  }
  throw std::logic_error("synthesize: unknown method");
}

std::string answer_for_mask(const torch::Tensor& mask, double min_area_fraction, double merge_fraction) {
  if (mask.dim() != 2) throw std::invalid_argument("answer_for_mask needs a [H, W] mask");
  const auto binary = (mask.to(torch::kFloat32) > 0.5).to(torch::kUInt8).contiguous();
  cv::Mat m(static_cast<int>(binary.size(0)), static_cast<int>(binary.size(1)), CV_8U, binary.data_ptr<uint8_t>());
  // NSA labels are speckled inside one pasted patch (the logistic follows the local change):
  // a closing merges the fragments of one anomaly before they are counted.
  const int k = std::max(1, static_cast<int>(std::lround(merge_fraction * std::min(m.rows, m.cols)))) | 1;
  cv::Mat closed;
  if (k > 1) cv::morphologyEx(m, closed, cv::MORPH_CLOSE, cv::getStructuringElement(cv::MORPH_ELLIPSE, {k, k}));
  else closed = m.clone();
  const auto map = to_tensor(closed, torch::kUInt8).to(torch::kFloat32);
  const int64_t area = map.numel();
  const auto min_area = std::max<int64_t>(1, std::llround(min_area_fraction * static_cast<double>(area)));
  auto regions = anomaly::find_regions(map, 0.5, min_area);
  // Specks alone must not turn a synthetic anomaly into a "No": then the largest one counts.
  if (regions.empty() && (map > 0.5).any().item<bool>()) regions = {anomaly::find_regions(map, 0.5, 1).front()};
  return anomaly::describe(regions);
}

TrainingPair make_pair(const cv::Mat& normal, SyntheticSample synthetic, double min_area_fraction,
                       double merge_fraction) {
  TrainingPair pair;
  pair.normal = normal;
  pair.normal_mask = torch::zeros({normal.rows, normal.cols}, torch::kUInt8);
  pair.normal_answer = anomaly::describe({});
  pair.anomaly_answer = answer_for_mask(synthetic.mask, min_area_fraction, merge_fraction);
  pair.synthetic = std::move(synthetic);
  return pair;
}

}  // namespace iadgpt::data
