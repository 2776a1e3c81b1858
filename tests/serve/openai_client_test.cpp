// The official `openai` npm client against the real program (tests/web/openai_client_test.mjs;
// `openai` pinned in tests/web/package-lock.json, installed by scripts/install-deps.sh): a plain
// and a streamed chat completion with an image on a tiny bundle (imagebind_tiny + llama_tiny +
// random adapters), their finish_reason, usage and content, the stream equal to the plain answer.
#include "common/run.h"
#include "serve_process.h"
#include "serve_test_util.h"

using namespace iadgpt;
using namespace iadgpt::test;

TEST(OpenAiClientTest, PlainAndStreamedCompletionsWithAnImage) {
  const std::filesystem::path web = std::filesystem::path(IADGPT_SOURCE_DIR) / "tests" / "web";
  ASSERT_TRUE(std::filesystem::exists(web / "node_modules" / "openai" / "package.json"))
      << "the openai npm client is missing: run scripts/install-deps.sh (npm ci in tests/web)";
  const auto bundle = tiny_bundle("serve-openai-client");
  ServeProcess server(bundle.dir, {"--workers", "1"});
  const auto log = scratch("serve-openai-client") / "node.log";
  const std::string cmd = "cd " + shell_quote(web.string()) + " && node openai_client_test.mjs --url http://127.0.0.1:" +
                          std::to_string(server.port()) + " --image " +
                          shell_quote(data("hazelnut_toy/hazelnut/test/colour/01.jpg").string()) +
                          " --class hazelnut >" + shell_quote(log.string()) + " 2>&1";
  const int status = std::system(cmd.c_str());
  const auto output = slurp(log);
  std::cout << output;
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << output << "\nserver log:\n" << server.slurp_log();
  EXPECT_NE(output.find("\"ok\":true"), std::string::npos) << output;
  EXPECT_TRUE(server.alive());
}
