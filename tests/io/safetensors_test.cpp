// safetensors reader/writer: round trips, fixtures, and one specific error per malformation.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "common/shared.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"

namespace io = iadgpt::io;
namespace fs = std::filesystem;

namespace {

fs::path scratch() { return iadgpt::test::scratch("io-safetensors"); }

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with the given header text and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& header, size_t data_bytes, std::optional<uint64_t> declared_len = {}) {
  uint64_t n = declared_len.value_or(header.size());
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  s += header;
  s.append(data_bytes, '\0');
  return s;
}

// Expects load_safetensors(file with `bytes`) to throw InputError containing `needle`.
void expect_rejected(const std::string& name, const std::string& bytes, const std::string& needle) {
  auto p = scratch() / (name + ".safetensors");
  write_file(p, bytes);
  try {
    io::load_safetensors(p);
    FAIL() << name << ": accepted, expected an error containing '" << needle << "'";
  } catch (const iadgpt::InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << name << ": got '" << e.what() << "'";
    EXPECT_NE(std::string(e.what()).find(p.string()), std::string::npos) << "error must name the file: " << e.what();
  }
  // The in-memory parser (the fuzzing entry point) must agree.
  std::span<const uint8_t> span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
  EXPECT_THROW(io::parse_safetensors(span, name), iadgpt::InputError) << name;
}

io::TensorMap all_dtypes() {
  io::TensorMap m;
  auto r = torch::arange(-6, 6, torch::kFloat64).reshape({3, 4}) * 0.37;
  m["f32"] = r.to(torch::kFloat32);
  m["f16"] = r.to(torch::kFloat16);
  m["bf16"] = r.to(torch::kBFloat16).t();  // non-contiguous: the writer must make it contiguous
  m["i64"] = torch::arange(-5, 5, torch::kInt64) * (int64_t{1} << 40);
  m["i32"] = torch::arange(-5, 5, torch::kInt32) * 100000;
  m["u8"] = torch::arange(0, 256, torch::kInt64).to(torch::kUInt8).reshape({16, 16});
  m["bool"] = torch::tensor({true, false, true}, torch::kBool);
  m["scalar"] = torch::tensor(2.5f);             // 0-d
  m["empty"] = torch::zeros({0, 3}, torch::kFloat32);  // 0 bytes
  return m;
}

}  // namespace

TEST(Safetensors, RoundTripKeepsEveryDtypeShapeAndValue) {
  auto p = scratch() / "round.safetensors";
  const auto in = all_dtypes();
  io::save_safetensors(p, in, {{"format", "pt"}, {"note", "x"}});
  std::map<std::string, std::string> meta;
  auto out = io::load_safetensors(p, &meta);
  ASSERT_EQ(out.size(), in.size());
  for (const auto& [k, v] : in) {
    ASSERT_TRUE(out.count(k)) << k;
    EXPECT_EQ(out[k].scalar_type(), v.scalar_type()) << k;
    EXPECT_EQ(out[k].sizes(), v.sizes()) << k;
    EXPECT_TRUE(torch::equal(out[k], v)) << k;  // exact: bytes are copied, not converted
  }
  EXPECT_EQ(meta, (std::map<std::string, std::string>{{"format", "pt"}, {"note", "x"}}));
}

TEST(Safetensors, WriterPadsHeaderTo8BytesWithSpacesAndSortsNames) {
  auto bytes = io::serialize_safetensors(all_dtypes(), {});
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1) << "padding must be trailing spaces";
  // Data offsets follow name order: "bf16" < "bool" < "empty" < "f16" ...
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["bf16"]["data_offsets"][0], 0);
  EXPECT_EQ(j["bool"]["data_offsets"][0], j["bf16"]["data_offsets"][1]);
  EXPECT_EQ(j["bf16"]["shape"], nlohmann::json({4, 3}));
}

TEST(Safetensors, LoadedTensorsOutliveNothingButRemainValidAndWritable) {
  auto p = scratch() / "cow.safetensors";
  io::save_safetensors(p, {{"w", torch::ones({4, 4})}});
  torch::Tensor w;
  { w = io::load_safetensors(p).at("w"); }  // the map is gone; the mapping must survive
  w.add_(1);                                  // copy-on-write: must not fault nor touch the file
  EXPECT_TRUE(torch::equal(w, torch::full({4, 4}, 2.0f)));
  EXPECT_TRUE(torch::equal(io::load_safetensors(p).at("w"), torch::ones({4, 4})));
}

TEST(Safetensors, LlamaTinyShardedBf16EqualsSingleFileF32) {
  auto single = io::load_checkpoint(iadgpt::test::fixture("llama_tiny/model.safetensors"));
  auto sharded = io::load_checkpoint(iadgpt::test::fixture("llama_tiny/sharded"));
  EXPECT_EQ(single.format, io::Format::Safetensors);
  EXPECT_EQ(sharded.format, io::Format::HuggingFaceDir);
  EXPECT_EQ(single.metadata.at("format"), "pt");
  ASSERT_EQ(single.tensors.size(), 21u);
  ASSERT_EQ(sharded.tensors.size(), 21u);
  ASSERT_TRUE(sharded.hf_config.has_value());
  EXPECT_EQ((*sharded.hf_config)["hidden_size"], 64);
  EXPECT_EQ(single.tensors.at("model.layers.0.self_attn.k_proj.weight").sizes(), (std::vector<int64_t>{32, 64}));
  for (const auto& [k, v] : single.tensors) {
    ASSERT_TRUE(sharded.tensors.count(k)) << k;
    EXPECT_EQ(v.scalar_type(), torch::kFloat32) << k;
    EXPECT_EQ(sharded.tensors.at(k).scalar_type(), torch::kBFloat16) << k;
    // Exact: the README says every value is bf16-representable.
    EXPECT_TRUE(torch::equal(sharded.tensors.at(k).to(torch::kFloat32), v)) << k;
  }
}

TEST(Safetensors, FloatDtypeOptionConvertsFloatsOnly) {
  auto p = scratch() / "conv.safetensors";
  io::save_safetensors(p, {{"f", torch::ones({2})}, {"i", torch::ones({2}, torch::kInt64)}});
  auto ck = io::load_checkpoint(p, {.float_dtype = torch::kBFloat16});
  EXPECT_EQ(ck.tensors.at("f").scalar_type(), torch::kBFloat16);
  EXPECT_EQ(ck.tensors.at("i").scalar_type(), torch::kInt64);
}

TEST(SafetensorsMalformed, TruncatedFile) { expect_rejected("truncated", std::string("\x10\0\0", 3), "truncated safetensors file"); }

TEST(SafetensorsMalformed, HeaderLengthPastEndOfFile) {
  expect_rejected("hdrlen", raw_file("{}", 0, 4096), "header length 4096 past end of file");
}

TEST(SafetensorsMalformed, HeaderLengthAbsurd) {
  expect_rejected("hdrhuge", raw_file("{}", 0, uint64_t{1} << 62), "is too large");
}

TEST(SafetensorsMalformed, HeaderNotJson) { expect_rejected("notjson", raw_file("{\"a\": [1,", 0), "header is not valid JSON"); }

TEST(SafetensorsMalformed, HeaderNotObject) { expect_rejected("notobj", raw_file("[1, 2]  ", 0), "not a JSON object"); }

TEST(SafetensorsMalformed, MissingField) {
  expect_rejected("nofield", raw_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "'data_offsets' must be [begin, end]");
}

TEST(SafetensorsMalformed, OffsetsPastEnd) {
  expect_rejected("offpast", raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4),
                  "past the end of the data section");
}

TEST(SafetensorsMalformed, OverlappingOffsets) {
  expect_rejected("overlap",
                  raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                           12),
                  "overlapping data_offsets");
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_rejected("dtype", raw_file(R"({"a":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})", 4),
                  "unknown dtype 'F8_E4M3'");
}

TEST(SafetensorsMalformed, ShapeTimesDtypeNotLength) {
  expect_rejected("size", raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                  "needs 12 bytes but data_offsets [0,8] hold 8");
}

TEST(SafetensorsMalformed, ShapeOverflow) {
  expect_rejected("overflow",
                  raw_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8),
                  "overflows");
}

TEST(SafetensorsMalformed, BeginAfterEnd) {
  expect_rejected("beginend", raw_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 8), "begin > end");
}

TEST(SafetensorsMalformed, MetadataNotStringToString) {
  expect_rejected("meta", raw_file(R"({"__metadata__":{"format":1}})", 0), "__metadata__ value 'format' is not a string");
}
