// The web page end to end in headless Chromium (tests/web/page_test.mjs, playwright-core from
// tests/web/node_modules, installed by scripts/install-deps.sh): the real program with a tiny
// bundle made by `iadgpt bundle create --init-random`, an image dropped on the page, a good
// reference, the result, one chat turn, and a screenshot at <build>/web_page.png.
#include "common/run.h"
#include "serve_process.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;

TEST(BrowserTest, UploadInspectAndChatInHeadlessChromium) {
  const std::filesystem::path web = std::filesystem::path(IADGPT_SOURCE_DIR) / "tests" / "web";
  ASSERT_TRUE(std::filesystem::exists(web / "node_modules" / "playwright-core"))
      << "playwright-core missing: run scripts/install-deps.sh (npm ci in tests/web)";
  ASSERT_TRUE(std::filesystem::exists("/usr/bin/chromium")) << "chromium missing: run scripts/install-deps.sh";
  // The bundle as a user makes one: `iadgpt bundle create --init-random` on the tiny fixtures.
  const auto bundle_dir = scratch("serve-browser") / "bundle";
  const auto created = run_iadgpt(std::vector<std::string>{
      "bundle", "create", "--vision", fixture("imagebind_tiny/imagebind_tiny.safetensors").string(),
      "--vision-config", fixture("imagebind_tiny/config.json").string(),
      "--vocab", data("tokenizers/openai_clip/bpe_simple_vocab_16e6.txt.gz").string(),
      "--llm", fixture("llama_tiny").string(), "--tokenizer", fixture("stories260K/tokenizer.model").string(),
      "--init-random", "1", "--out", bundle_dir.string()});
  ASSERT_EQ(created.exit_code, 0) << created.err;
  // Short answers: llama_tiny's context is 256 tokens, and its random weights never stop early.
  ServeProcess server(bundle_dir, {"--workers", "1", "--answer-tokens", "12"});
  const auto screenshot = std::filesystem::path(IADGPT_BINARY_DIR) / "web_page.png";
  std::filesystem::remove(screenshot);
  const auto log = scratch("serve-browser") / "node.log";
  const std::string cmd = "cd " + shell_quote(web.string()) + " && node page_test.mjs --url http://127.0.0.1:" +
                          std::to_string(server.port()) + " --image " +
                          shell_quote(data("hazelnut_toy/hazelnut/test/colour/01.jpg").string()) + " --reference " +
                          shell_quote(data("hazelnut_toy/hazelnut/train/good/00.jpg").string()) +
                          " --class hazelnut --screenshot " + shell_quote(screenshot.string()) + " >" +
                          shell_quote(log.string()) + " 2>&1";
  const int status = std::system(cmd.c_str());
  const auto output = slurp(log);
  std::cout << output;
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output << "\nserver log:\n" << server.slurp_log();
  EXPECT_NE(output.find("\"ok\":true"), std::string::npos) << output;
  EXPECT_TRUE(std::filesystem::exists(screenshot));
  EXPECT_GT(std::filesystem::file_size(screenshot), 10000u);
  EXPECT_TRUE(server.alive());
}
