// Command tideflow-go-worker is the Go example worker: it serves the demo blocks
// (go.wordcount@1) or the worker conformance blocks (conf.*, see docs/workers.md) on one task
// queue until SIGTERM or SIGINT, then drains and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/tideflow/tideflow/workers/go/tideflow"
)

func main() {
	address := flag.String("address", "127.0.0.1:7233", "frontend host:port")
	namespace := flag.String("namespace", "default", "namespace")
	taskQueue := flag.String("task-queue", "go", "task queue to poll")
	identity := flag.String("identity", "", "worker identity (default host:pid)")
	maxConcurrent := flag.Int("max-concurrent", 10, "blocks running at once")
	blocks := flag.String("blocks", "demo", "block set to serve: demo or conformance")
	drain := flag.Float64("drain-timeout-s", 30, "seconds a shutdown waits for running blocks")
	var dial tideflow.DialOptions
	flag.StringVar(&dial.APIKey, "api-key", os.Getenv("TIDEFLOW_API_KEY"), "API key (worker role)")
	flag.StringVar(&dial.TLSCA, "tls-ca", "", "connect with TLS, trusting this CA (PEM)")
	flag.StringVar(&dial.TLSCert, "tls-cert", "", "client certificate (PEM), for mutual TLS")
	flag.StringVar(&dial.TLSKey, "tls-key", "", "the client certificate's key (PEM)")
	flag.Parse()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(logger, *address, dial, *blocks, tideflow.Options{
		Namespace: *namespace, TaskQueue: *taskQueue, Identity: *identity,
		MaxConcurrent: *maxConcurrent, DrainTimeout: time.Duration(*drain * float64(time.Second)),
		Logger: logger,
	}); err != nil {
		logger.Error("worker failed", "error", err)
		os.Exit(1)
	}
}

func run(logger *slog.Logger, address string, dial tideflow.DialOptions, set string, opts tideflow.Options) error {
	register, ok := blockSets[set]
	if !ok {
		return fmt.Errorf("--blocks %q: want demo or conformance", set)
	}
	conn, err := tideflow.Dial(address, dial)
	if err != nil {
		return err
	}
	defer conn.Close()
	worker, err := tideflow.New(conn, opts)
	if err != nil {
		return err
	}
	register(worker)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger.Info("polling", "address", address, "task_queue", opts.TaskQueue, "blocks", set)
	return worker.Run(ctx)
}

var blockSets = map[string]func(*tideflow.Worker){
	"demo":        registerDemo,
	"conformance": registerConformance,
}
