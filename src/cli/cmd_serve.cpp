// `iadgpt serve`: the HTTP API and web page in front of a pool of model workers (src/serve).
#include <fmt/format.h>

#include <torch/torch.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <pthread.h>
#include <thread>

#include "cli/commands.h"
#include "cli/device_flag.h"
#include "io/error.h"
#include "model/bundle.h"
#include "serve/auth.h"
#include "serve/iadgpt_engine.h"
#include "serve/map_engine.h"
#include "serve/server.h"
#include "vision/vit.h"

namespace iadgpt::cli {

void add_serve(CLI::App& app) {
  struct Opts {
    std::string model;
    serve::ServerOptions server;
    bool maps_only = false;
    std::string api_key_file;
    std::string vision_quant;  // empty: the bundle's
    DeviceFlag device;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("serve", "HTTP API + web page for a model bundle (loopback by default)");
  cmd->add_option("--model", o->model, "model bundle directory (iadgpt.json)")->required();
  cmd->add_option("--host", o->server.host,
                  "address to listen on (127.0.0.1 = this machine only; any other address needs --api-key-file "
                  "or --insecure)")
      ->capture_default_str();
  cmd->add_option("--api-key-file", o->api_key_file,
                  "file of API keys, one a line ('#' comments and blank lines ignored); every route but /v1/health "
                  "and the page's files then needs 'Authorization: Bearer <key>' (HTTP 401 otherwise)");
  cmd->add_flag("--insecure", o->server.insecure, "allow a non-loopback --host without API keys");
  cmd->add_option("--drain-timeout", o->server.drain_timeout_s,
                  "on SIGTERM/SIGINT: new requests get HTTP 503 and requests in flight get this many seconds to "
                  "finish before the server exits (0 = do not wait)")
      ->capture_default_str();
  cmd->add_option("--port", o->server.port, "TCP port (0 = any free port; the chosen one is printed)")->capture_default_str();
  cmd->add_option("--workers", o->server.workers, "model workers (one copy of the weights for all; each has its own KV cache and scratch)")->capture_default_str();
  cmd->add_option("--queue", o->server.queue, "requests that may wait for a worker; more get HTTP 429")->capture_default_str();
  cmd->add_option("--batch", o->server.batch,
                  "inspections (POST /v1/detect) a worker runs through one vision tower forward: it takes up to this "
                  "many queued requests at once, and up to this many answers (of all workers) are decoded together, "
                  "each weight read once per step for all (1 = each alone, as without batching)")
      ->capture_default_str();
  cmd->add_option("--batch-wait", o->server.batch_wait_ms,
                  "milliseconds a worker holding fewer than --batch inspections waits for more to arrive before it runs "
                  "them (0 = run what is queued at once)")
      ->capture_default_str();
  cmd->add_option("--max-body", o->server.max_body_mb, "request body limit in MB (HTTP 413 above)")->capture_default_str();
  cmd->add_option("--timeout", o->server.timeout_s, "socket read/write timeout in seconds")->capture_default_str();
  cmd->add_option("--session-ttl", o->server.session_ttl_s, "chat sessions expire after this many idle seconds")->capture_default_str();
  cmd->add_option("--session-memory", o->server.session_memory_mb,
                  "MB that chat sessions may hold (decoded images + turns); least recently used idle sessions are "
                  "evicted to make room, a request whose images alone exceed it gets HTTP 413")
      ->capture_default_str();
  cmd->add_option("--max-tokens", o->server.max_tokens, "largest max_tokens a request may ask for")->capture_default_str();
  cmd->add_option("--answer-tokens", o->server.answer_tokens, "max_tokens of requests that do not say")->capture_default_str();
  o->device.add_to(*cmd, "cpu, or the bundle's");
  cmd->add_option("--vision-quant", o->vision_quant,
                  "none | q8: the vision tower's matrices in int8 (CPU only; default: the bundle's field)");
  cmd->add_flag("--maps-only", o->maps_only, "serve the bundle's anomaly-map pipeline without its LLM (answers from the map)");
  cmd->callback([o] {
    if (!o->api_key_file.empty()) o->server.api_keys = serve::read_api_keys(o->api_key_file);
    serve::validate(o->server);  // before the model loads: a bad flag fails at once
    auto bundle = model::read_bundle(o->model);
    o->device.apply(bundle.device);
    if (!o->vision_quant.empty())  // none or q8, checked before the model loads
      bundle.vision_quant = nn::quant_format_name(vision::parse_vision_quant(o->vision_quant, "--vision-quant"));
    // --threads (all cores by default) is the total: the workers share it.
    o->server.threads_per_worker = std::max(1, torch::get_num_threads() / std::max(1, o->server.workers));
    // Signals are taken by one thread with sigwait (stop() is not async-signal-safe); block
    // them before any thread starts so that every thread inherits the mask.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    if (!serve::is_loopback(o->server.host) && o->server.api_keys.empty() && o->server.insecure) {
      std::cerr << fmt::format("serve: warning: --insecure: listening on {} makes the API reachable from other "
                               "machines without authentication\n", o->server.host);
    }
    // --batch > 1 also decodes the workers' answers together, on one thread with all of --threads.
    auto engines = serve::shared_weights_factory(bundle, o->maps_only, o->server.batch, torch::get_num_threads());
    serve::EngineFactory factory = [&, engines](int worker) {
      std::cerr << (worker == 0 ? fmt::format("serve: loading the model for {} worker(s)\n", o->server.workers)
                                : fmt::format("serve: worker {} of {} shares the weights\n", worker + 1, o->server.workers));
      return engines(worker);
    };
    serve::Server server(o->server, factory);
    const int port = server.bind();
    std::cout << fmt::format("iadgpt serve: listening on http://{}:{} ({} worker(s), queue {}, batch {})", o->server.host,
                             port, o->server.workers, o->server.queue, o->server.batch)
              << std::endl;
    std::atomic<bool> running{true};
    std::thread stopper([&] {
      int sig = 0;
      sigwait(&signals, &sig);
      if (!running) return;  // the wake-up below: run() already returned
      std::cerr << fmt::format("serve: stopping: new requests get 503; waiting up to {} s for requests in flight\n",
                               o->server.drain_timeout_s);
      const auto left = server.shutdown(std::chrono::seconds(o->server.drain_timeout_s));
      if (left > 0) {
        // Stopping the listener would wait for them (their worker is still computing): leave now.
        std::cerr << fmt::format("serve: {} request(s) still running after --drain-timeout {} s; exiting without "
                                 "their answers\n", left, o->server.drain_timeout_s);
        std::_Exit(0);
      }
      std::cerr << "serve: every request answered; exiting\n";
    });
    server.run();
    running = false;
    // run() also returns when listening fails; wake the signal thread so it can be joined.
    pthread_kill(stopper.native_handle(), SIGTERM);
    stopper.join();
  });
}

}  // namespace iadgpt::cli
