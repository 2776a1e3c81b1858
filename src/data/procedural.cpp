#include "data/procedural.h"

#include <fmt/format.h>

#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>

#include "image/overlay.h"
#include "io/error.h"
#include "io/splitmix.h"

namespace iadgpt::data {
namespace fs = std::filesystem;
namespace {

constexpr double kPi = std::numbers::pi;
// Parts sit in a fixture, as on a production line: the same position and
// same orientation ± a degree or two. (Sub-patch shifts of sharp edges are what a random
// encoder cannot ignore; a trained one would — see README.md of src/demo.) Variation comes from the material (noise, brushing, weave,
// grain) and the lighting, which is what an inspector must learn to ignore.
constexpr double kPlacement = 0.0;

// Our own draws from raw 64-bit outputs: std::*_distribution is implementation-defined, and the
// generator promises the same pixels for a seed whatever the standard library.
struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  double uniform() { return static_cast<double>(g() >> 11) * 0x1.0p-53; }
  double uniform(double a, double b) { return a + (b - a) * uniform(); }
  int integer(int a, int b) { return a + static_cast<int>(g() % static_cast<uint64_t>(b - a + 1)); }  // [a, b]
  double normal() {  // Box-Muller
    double u = std::max(uniform(), 1e-300), v = uniform();
    return std::sqrt(-2.0 * std::log(u)) * std::cos(2 * kPi * v);
  }
};

using io::splitmix64;

uint64_t fnv1a(uint64_t h, std::string_view s) {
  for (unsigned char c : s) h = (h ^ c) * 0x100000001B3ull;
  return (h ^ 0xFF) * 0x100000001B3ull;  // separator: ("ab","c") != ("a","bc")
}

// Float images are single- or three-channel CV_32F in [0, 1]; three channels are R, G, B (every
// colour below, Scalar included, is written in that order).
cv::Mat white_noise(int size, Rng& rng) {
  cv::Mat n(size, size, CV_32F);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) n.at<float>(y, x) = static_cast<float>(rng.normal());
  return n;
}

// Smooth noise in [-1, 1]: a coarse random grid upsampled bicubically.
cv::Mat value_noise(int size, int cells, Rng& rng) {
  cv::Mat grid(cells + 1, cells + 1, CV_32F);
  for (int y = 0; y <= cells; ++y)
    for (int x = 0; x <= cells; ++x) grid.at<float>(y, x) = static_cast<float>(rng.uniform(-1, 1));
  cv::Mat out;
  cv::resize(grid, out, cv::Size(size, size), 0, 0, cv::INTER_CUBIC);
  return out;
}

cv::Mat normalized(const cv::Mat& m) {
  cv::Scalar mean, stddev;
  cv::meanStdDev(m, mean, stddev);
  cv::Mat out = (m - mean[0]) / std::max(stddev[0], 1e-6);
  return out;
}

// Brushed metal: streaks of white noise smeared along one direction, plus slow shading.
cv::Mat brushed(int size, double angle_deg, Rng& rng) {
  int big = size * 3 / 2;
  cv::Mat n = white_noise(big, rng), streaks;
  cv::blur(n, streaks, cv::Size(41, 1));
  cv::Mat rot = cv::getRotationMatrix2D(cv::Point2f(big / 2.0f, big / 2.0f), angle_deg, 1.0), turned;
  cv::warpAffine(streaks, turned, rot, cv::Size(big, big), cv::INTER_LINEAR, cv::BORDER_REFLECT);
  int off = (big - size) / 2;
  cv::Mat tex = normalized(turned(cv::Rect(off, off, size, size)).clone());
  cv::Mat shade = value_noise(size, 3, rng);
  return 0.62 + 0.05 * tex + 0.03 * shade;
}

// Plain weave: warp and weft threads alternate over/under every cell; thread irregularity from noise.
cv::Mat weave(int size, Rng& rng) {
  int period = rng.integer(7, 9);
  cv::Mat wobble = value_noise(size, 8, rng), fibre = white_noise(size, rng), tex(size, size, CV_32F);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double u = static_cast<double>(x % period) / period, v = static_cast<double>(y % period) / period;
      bool warp_on_top = ((x / period) + (y / period)) % 2 == 0;
      double profile = warp_on_top ? std::sin(kPi * u) : std::sin(kPi * v);
      tex.at<float>(y, x) = static_cast<float>(0.35 + 0.4 * profile + 0.05 * wobble.at<float>(y, x) +
                                               0.03 * fibre.at<float>(y, x));
    }
  return tex;
}

// Wood: sinusoidal growth rings across the board, bent by smooth noise, sharpened.
cv::Mat wood(int size, Rng& rng) {
  double angle = rng.uniform(-0.15, 0.15), period = rng.uniform(9, 14);
  cv::Mat bend = value_noise(size, 4, rng), grain = white_noise(size, rng), tex(size, size, CV_32F);
  cv::blur(grain, grain, cv::Size(15, 1));
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      double t = y * std::cos(angle) + x * std::sin(angle) + 10.0 * bend.at<float>(y, x);
      double ring = 0.5 + 0.5 * std::sin(2 * kPi * t / period);
      tex.at<float>(y, x) = static_cast<float>(std::pow(ring, 3.0) * 0.8 + 0.05 * grain.at<float>(y, x));
    }
  return tex;
}

// Intensity [0,1] → colour between `dark` and `light` (RGB in [0,1]).
cv::Mat colourise(const cv::Mat& t, cv::Vec3f dark, cv::Vec3f light) {
  cv::Mat out(t.size(), CV_32FC3);
  for (int y = 0; y < t.rows; ++y)
    for (int x = 0; x < t.cols; ++x) {
      float a = std::clamp(t.at<float>(y, x), 0.0f, 1.0f);
      out.at<cv::Vec3f>(y, x) = dark * (1 - a) + light * a;
    }
  return out;
}

cv::Mat grey3(const cv::Mat& t, cv::Vec3f tint = {1, 1, 1}) { return colourise(t, {0, 0, 0}, tint); }

void composite(cv::Mat& dst, const cv::Mat& src, const cv::Mat& mask8) { src.copyTo(dst, mask8); }

cv::Mat to_u8(const cv::Mat& f3) {
  cv::Mat out;
  f3.convertTo(out, CV_8UC3, 255.0);
  return out;
}

cv::Point2f jitter(int size, double fraction, Rng& rng) {
  return {static_cast<float>(size / 2.0 + rng.uniform(-fraction, fraction) * size),
          static_cast<float>(size / 2.0 + rng.uniform(-fraction, fraction) * size)};
}

// ---------------------------------------------------------------------------------------------
// Parts. Each fills image (float RGB), object mask and background.
struct Canvas {
  cv::Mat image, object, background;  // CV_32FC3, CV_8U, CV_32FC3
};

Canvas washer(int size, Rng& rng) {
  Canvas c;
  c.background = grey3(0.16 + 0.05 * value_noise(size, 6, rng) + 0.015 * white_noise(size, rng), {0.9f, 0.95f, 1.0f});
  auto centre = jitter(size, kPlacement, rng);
  double outer = size * 0.375, inner = size * 0.165;
  cv::Mat metal = brushed(size, rng.uniform(27, 33), rng);
  double light = rng.uniform(0.7, 0.85);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {  // a bevelled ring: brighter towards the light
      double a = std::atan2(y - centre.y, x - centre.x);
      metal.at<float>(y, x) *= static_cast<float>(0.94 + 0.06 * std::cos(a - light));
    }
  c.image = c.background.clone();
  c.object = cv::Mat::zeros(size, size, CV_8U);
  cv::circle(c.object, centre, static_cast<int>(outer), 255, cv::FILLED, cv::LINE_8);
  cv::circle(c.object, centre, static_cast<int>(inner), 0, cv::FILLED, cv::LINE_8);
  composite(c.image, grey3(metal, {0.97f, 0.98f, 1.0f}), c.object);
  cv::circle(c.image, centre, static_cast<int>(outer), cv::Scalar(0.35, 0.36, 0.38), 2, cv::LINE_8);
  cv::circle(c.image, centre, static_cast<int>(inner), cv::Scalar(0.3, 0.31, 0.33), 2, cv::LINE_8);
  return c;
}

Canvas screw(int size, Rng& rng) {
  Canvas c;
  c.background = grey3(0.78 + 0.04 * value_noise(size, 5, rng) + 0.01 * white_noise(size, rng), {0.98f, 0.97f, 0.94f});
  auto centre = jitter(size, kPlacement, rng);
  double radius = size * 0.38;
  // Bead-blasted zinc plating: a matte, fine-grained finish (brushing is the washer's).
  cv::Mat metal = 0.66 + 0.03 * value_noise(size, 10, rng) + 0.012 * white_noise(size, rng);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {  // domed head: lit from the top left
      double dx = (x - centre.x) / radius, dy = (y - centre.y) / radius;
      double r2 = std::min(dx * dx + dy * dy, 1.0);
      metal.at<float>(y, x) *= static_cast<float>(0.85 + 0.15 * (1 - r2) - 0.08 * (dx + dy));
    }
  c.image = c.background.clone();
  c.object = cv::Mat::zeros(size, size, CV_8U);
  cv::circle(c.object, centre, static_cast<int>(radius), 255, cv::FILLED, cv::LINE_8);
  composite(c.image, grey3(metal, {0.95f, 0.93f, 0.85f}), c.object);  // zinc-plated steel
  cv::circle(c.image, centre, static_cast<int>(radius), cv::Scalar(0.3, 0.3, 0.28), 2, cv::LINE_8);
  // Cross recess at a random angle, and the embossed property class "8.8" above it.
  double a = 0.3, arm = radius * 0.45, w = radius * 0.11;
  for (int k = 0; k < 2; ++k) {
    double t = a + k * kPi / 2;
    cv::Point2f d(static_cast<float>(std::cos(t) * arm), static_cast<float>(std::sin(t) * arm));
    cv::line(c.image, centre - d, centre + d, cv::Scalar(0.12, 0.12, 0.11), static_cast<int>(2 * w), cv::LINE_8);
  }
  cv::putText(c.image, "8.8", centre + cv::Point2f(static_cast<float>(-radius * 0.25), static_cast<float>(-radius * 0.62)),
              cv::FONT_HERSHEY_SIMPLEX, size / 560.0, cv::Scalar(0.45, 0.44, 0.4), 1, cv::LINE_8);
  return c;
}

Canvas pcb(int size, Rng& rng) {
  Canvas c;
  c.background = grey3(0.22 + 0.03 * value_noise(size, 5, rng), {1.0f, 0.98f, 0.95f});
  auto centre = jitter(size, kPlacement, rng);
  int half = static_cast<int>(size * 0.42);
  cv::Rect plate(static_cast<int>(centre.x) - half, static_cast<int>(centre.y) - half, 2 * half, 2 * half);
  cv::Mat solder = colourise(0.5 + 0.08 * value_noise(size, 6, rng) + 0.02 * white_noise(size, rng),
                             {0.02f, 0.25f, 0.1f}, {0.15f, 0.6f, 0.3f});
  c.image = c.background.clone();
  c.object = cv::Mat::zeros(size, size, CV_8U);
  cv::rectangle(c.object, plate, 255, cv::FILLED);
  composite(c.image, solder, c.object);
  // The board layout is the same for every normal part (a fixed layout seed); only position,
  // noise and the lot number change, as on a production line.
  Rng layout(0x5C0FFEE);
  const cv::Scalar copper(0.85, 0.62, 0.3), pad(0.9, 0.8, 0.45), chip(0.08, 0.08, 0.09), silk(0.95, 0.95, 0.92);
  cv::Point o = plate.tl();
  auto at = [&](double fx, double fy) {
    return o + cv::Point(static_cast<int>(fx * plate.width), static_cast<int>(fy * plate.height));
  };
  for (int i = 0; i < 7; ++i) {  // traces with one 90° bend, ending on pads
    cv::Point a = at(layout.uniform(0.08, 0.92), layout.uniform(0.08, 0.92));
    cv::Point b = at(layout.uniform(0.08, 0.92), layout.uniform(0.08, 0.92));
    cv::Point bend(b.x, a.y);
    cv::line(c.image, a, bend, copper, 3, cv::LINE_8);
    cv::line(c.image, bend, b, copper, 3, cv::LINE_8);
    for (auto p : {a, b}) {
      cv::circle(c.image, p, 5, pad, cv::FILLED, cv::LINE_8);
      cv::circle(c.image, p, 2, cv::Scalar(0.1, 0.1, 0.1), cv::FILLED, cv::LINE_8);
    }
  }
  cv::rectangle(c.image, cv::Rect(at(0.35, 0.35), at(0.65, 0.6)), chip, cv::FILLED);
  cv::putText(c.image, "IAD", at(0.4, 0.51), cv::FONT_HERSHEY_SIMPLEX, size / 600.0, silk, 1, cv::LINE_8);
  cv::putText(c.image, "LOT 042", at(0.06, 0.95), cv::FONT_HERSHEY_PLAIN,
              size / 260.0, silk, 1, cv::LINE_8);
  return c;
}

Canvas fabric(int size, Rng& rng) {
  Canvas c;
  c.background = grey3(0.05 + 0.02 * value_noise(size, 5, rng));  // a hole shows the dark table
  c.image = colourise(weave(size, rng), {0.1f, 0.14f, 0.3f}, {0.55f, 0.62f, 0.8f});  // denim-like
  c.object = cv::Mat(size, size, CV_8U, cv::Scalar(255));
  return c;
}

Canvas board(int size, Rng& rng) {
  Canvas c;
  c.background = grey3(0.05 + 0.02 * value_noise(size, 5, rng));
  c.image = colourise(wood(size, rng), {0.78f, 0.6f, 0.4f}, {0.5f, 0.32f, 0.18f});
  c.object = cv::Mat(size, size, CV_8U, cv::Scalar(255));
  // A printed grading stamp at a jittered place.
  cv::Point tl(static_cast<int>(size * rng.uniform(0.3, 0.31)), static_cast<int>(size * rng.uniform(0.6, 0.61)));
  cv::Rect stamp(tl, cv::Size(static_cast<int>(size * 0.4), static_cast<int>(size * 0.18)));
  const cv::Scalar ink(0.15, 0.12, 0.35);
  cv::rectangle(c.image, stamp, ink, 2, cv::LINE_8);
  cv::putText(c.image, fmt::format("GRADE {}", "AB"[rng.integer(0, 1)]), tl + cv::Point(5, stamp.height * 2 / 3),
              cv::FONT_HERSHEY_SIMPLEX, size / 600.0, ink, 1, cv::LINE_8);
  return c;
}

// ---------------------------------------------------------------------------------------------
// Defects: each draws its shape into an 8U layer; colour changes are then applied inside the layer
// (∩ the part) only.
cv::Point2f point_on(const cv::Mat& object, Rng& rng, double margin) {
  int size = object.rows;
  for (int tries = 0; tries < 1000; ++tries) {
    cv::Point p(static_cast<int>(rng.uniform(margin, 1 - margin) * size), static_cast<int>(rng.uniform(margin, 1 - margin) * size));
    if (object.at<uint8_t>(p) != 0) return p;
  }
  return {size / 2.0f, size / 2.0f};
}

std::vector<cv::Point> random_walk(cv::Point2f p, double length, double step, double wiggle, Rng& rng) {
  double theta = rng.uniform(0, 2 * kPi);
  std::vector<cv::Point> pts{p};
  for (double s = 0; s < length; s += step) {
    theta += wiggle * rng.normal();
    p += cv::Point2f(static_cast<float>(step * std::cos(theta)), static_cast<float>(step * std::sin(theta)));
    pts.emplace_back(p);
  }
  return pts;
}

// Blend `colour` into the image inside `layer` with opacity `alpha` (per pixel when a float map).
void paint(cv::Mat& image, const cv::Mat& layer, cv::Vec3f colour, float alpha) {
  for (int y = 0; y < image.rows; ++y)
    for (int x = 0; x < image.cols; ++x)
      if (layer.at<uint8_t>(y, x)) {
        auto& px = image.at<cv::Vec3f>(y, x);
        px = px * (1 - alpha) + colour * alpha;
      }
}

void draw_scratch(Canvas& c, cv::Mat& layer, Rng& rng) {
  int size = layer.rows;
  auto pts = random_walk(point_on(c.object, rng, 0.2), size * rng.uniform(0.18, 0.32), 3.0, 0.08, rng);
  cv::polylines(layer, pts, false, 255, rng.integer(3, 4), cv::LINE_8);
  layer &= c.object;
  bool bright = rng.uniform() < 0.5;
  paint(c.image, layer, bright ? cv::Vec3f(1, 1, 1) : cv::Vec3f(0.05f, 0.05f, 0.05f), 0.8f);
}

void draw_spot(Canvas& c, cv::Mat& layer, Rng& rng) {
  int size = layer.rows;
  auto centre = point_on(c.object, rng, 0.18);
  cv::Size axes(static_cast<int>(size * rng.uniform(0.06, 0.1)), static_cast<int>(size * rng.uniform(0.05, 0.08)));
  double angle = rng.uniform(0, 180);
  cv::ellipse(layer, centre, axes, angle, 0, 360, 255, cv::FILLED, cv::LINE_8);
  layer &= c.object;
  // A dent: shaded dark on one side and bright on the other.
  double light = rng.uniform(0, 2 * kPi);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      if (layer.at<uint8_t>(y, x)) {
        double d = ((x - centre.x) * std::cos(light) + (y - centre.y) * std::sin(light)) / std::max(axes.width, 1);
        auto& px = c.image.at<cv::Vec3f>(y, x);
        px *= static_cast<float>(std::clamp(0.45 + 0.7 * d, 0.2, 1.5));
      }
}

void draw_missing(Canvas& c, cv::Mat& layer, Rng& rng) {
  int size = layer.rows;
  auto centre = point_on(c.object, rng, 0.15);
  std::vector<cv::Point> poly;
  double radius = size * rng.uniform(0.08, 0.13);
  for (int k = 0; k < 7; ++k) {
    double t = 2 * kPi * (k + rng.uniform(-0.3, 0.3)) / 7, r = radius * rng.uniform(0.6, 1.2);
    poly.emplace_back(centre + cv::Point2f(static_cast<float>(r * std::cos(t)), static_cast<float>(r * std::sin(t))));
  }
  cv::fillPoly(layer, std::vector<std::vector<cv::Point>>{poly}, 255, cv::LINE_8);
  layer &= c.object;
  c.background.copyTo(c.image, layer);
}

void draw_crack(Canvas& c, cv::Mat& layer, Rng& rng) {
  int size = layer.rows;
  auto main = random_walk(point_on(c.object, rng, 0.2), size * rng.uniform(0.2, 0.32), 6.0, 0.45, rng);
  cv::polylines(layer, main, false, 255, 3, cv::LINE_8);
  for (int b = rng.integer(1, 2); b > 0; --b) {
    auto from = main[static_cast<size_t>(rng.integer(1, static_cast<int>(main.size()) - 1))];
    cv::polylines(layer, random_walk(from, size * rng.uniform(0.05, 0.12), 5.0, 0.5, rng), false, 255, 3, cv::LINE_8);
  }
  layer &= c.object;
  paint(c.image, layer, {0.03f, 0.03f, 0.03f}, 0.85f);
}

void draw_contamination(Canvas& c, cv::Mat& layer, Rng& rng) {
  int size = layer.rows;
  auto centre = point_on(c.object, rng, 0.18);
  for (int k = rng.integer(3, 6); k > 0; --k) {
    cv::Point2f off(static_cast<float>(rng.uniform(-0.05, 0.05) * size), static_cast<float>(rng.uniform(-0.05, 0.05) * size));
    cv::circle(layer, centre + off, static_cast<int>(size * rng.uniform(0.03, 0.06)), 255, cv::FILLED, cv::LINE_8);
  }
  layer &= c.object;
  static const cv::Vec3f kColours[] = {{0.35f, 0.22f, 0.05f}, {0.05f, 0.05f, 0.04f}, {0.6f, 0.65f, 0.1f}, {0.75f, 0.1f, 0.1f}};
  paint(c.image, layer, kColours[rng.integer(0, 3)], static_cast<float>(rng.uniform(0.65, 0.85)));
}

Canvas to_canvas(const ProceduralPart& part) {
  Canvas c;
  part.image.convertTo(c.image, CV_32FC3, 1 / 255.0);
  part.background.convertTo(c.background, CV_32FC3, 1 / 255.0);
  c.object = part.object;
  return c;
}

std::string list(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

const std::vector<std::string>& procedural_classes() {
  static const std::vector<std::string> names{"washer", "screw", "pcb", "fabric", "wood"};
  return names;
}

const std::vector<std::string>& procedural_defects() {
  static const std::vector<std::string> names{"scratch", "spot", "missing", "crack", "contamination"};
  return names;
}

ProceduralPart make_part(std::string_view class_name, uint64_t seed, int size) {
  if (size < 64) throw InputError(fmt::format("procedural part size {}: expected at least 64", size));
  Rng rng(splitmix64(seed));
  Canvas c;
  if (class_name == "washer") c = washer(size, rng);
  else if (class_name == "screw") c = screw(size, rng);
  else if (class_name == "pcb") c = pcb(size, rng);
  else if (class_name == "fabric") c = fabric(size, rng);
  else if (class_name == "wood") c = board(size, rng);
  else
    throw InputError(fmt::format("procedural class '{}': expected one of {}", class_name, list(procedural_classes())));
  ProceduralPart part;
  part.image = to_u8(c.image);
  part.background = to_u8(c.background);
  part.object = c.object;
  part.mask = cv::Mat::zeros(size, size, CV_8U);
  part.class_name = std::string(class_name);
  return part;
}

ProceduralPart add_defect(const ProceduralPart& part, std::string_view defect, uint64_t seed) {
  using Draw = void (*)(Canvas&, cv::Mat&, Rng&);
  Draw draw = nullptr;
  if (defect == "scratch") draw = draw_scratch;
  else if (defect == "spot") draw = draw_spot;
  else if (defect == "missing") draw = draw_missing;
  else if (defect == "crack") draw = draw_crack;
  else if (defect == "contamination") draw = draw_contamination;
  else
    throw InputError(fmt::format("procedural defect '{}': expected one of {}", defect, list(procedural_defects())));
  Rng rng(splitmix64(seed ^ 0xD3FEC7ull));
  const int min_area = part.image.rows * part.image.cols / 1000;  // a defect a person can see
  for (int attempt = 0;; ++attempt) {
    Canvas c = to_canvas(part);
    cv::Mat layer = cv::Mat::zeros(part.image.size(), CV_8U);
    draw(c, layer, rng);
    if (cv::countNonZero(layer) < min_area && attempt < 50) continue;
    ProceduralPart out = part;
    // Pixels outside the layer were never touched, so the float round trip leaves them identical.
    cv::Mat drawn = to_u8(c.image);
    out.image = part.image.clone();
    drawn.copyTo(out.image, layer);
    out.mask = layer;
    out.defect = std::string(defect);
    return out;
  }
}

uint64_t procedural_seed(uint64_t base, std::string_view class_name, std::string_view split, std::string_view defect,
                         int index) {
  uint64_t h = 0xCBF29CE484222325ull ^ splitmix64(base);
  h = fnv1a(fnv1a(fnv1a(h, class_name), split), defect);
  return splitmix64(h ^ static_cast<uint64_t>(index));
}

int write_procedural_dataset(const fs::path& root, const ProceduralSplit& split) {
  const auto& classes = split.classes.empty() ? procedural_classes() : split.classes;
  int written = 0;
  auto save = [&](const fs::path& path, const cv::Mat& rgb8) {
    fs::create_directories(path.parent_path());
    image::write_png(path, rgb8);
    ++written;
  };
  auto save_mask = [&](const fs::path& path, const cv::Mat& mask) {
    fs::create_directories(path.parent_path());
    if (!cv::imwrite(path.string(), mask)) throw std::runtime_error("cannot write " + path.string());
  };
  for (const auto& cls : classes) {
    const fs::path dir = root / cls;
    fs::create_directories(dir / "train/good");  // the MVTec layout, even for a test-only (validation) tree
    for (int i = 0; i < split.train; ++i)
      save(dir / "train/good" / fmt::format("{:03d}.png", i),
           make_part(cls, procedural_seed(split.seed, cls, "train", "good", i), split.size).image);
    for (int i = 0; i < split.test_good; ++i)
      save(dir / "test/good" / fmt::format("{:03d}.png", i),
           make_part(cls, procedural_seed(split.seed, cls, split.test_seeds, "good", i), split.size).image);
    for (const auto& defect : procedural_defects())
      for (int i = 0; i < split.test_defect; ++i) {
        const uint64_t seed = procedural_seed(split.seed, cls, split.test_seeds, defect, i);
        auto bad = add_defect(make_part(cls, seed, split.size), defect, seed);
        save(dir / "test" / defect / fmt::format("{:03d}.png", i), bad.image);
        save_mask(dir / "ground_truth" / defect / fmt::format("{:03d}_mask.png", i), bad.mask);
      }
  }
  return written;
}

}  // namespace iadgpt::data
