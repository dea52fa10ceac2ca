package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/tideflow/tideflow/workers/go/tideflow"
)

func registerDemo(w *tideflow.Worker) {
	w.Register("go.wordcount@1", func(_ context.Context, task *tideflow.Task) (any, error) {
		var in struct {
			Text string `json:"text"`
		}
		if err := task.DecodeInput(&in); err != nil {
			return nil, tideflow.NewApplicationError("BadInput", err.Error(), true)
		}
		return map[string]any{"words": len(strings.Fields(in.Text)), "worker": "go"}, nil
	})
}

// registerConformance serves the worker conformance blocks (docs/workers.md).
func registerConformance(w *tideflow.Worker) {
	w.Register("conf.echo@1", func(_ context.Context, task *tideflow.Task) (any, error) {
		return task.Input, nil
	})
	w.Register("conf.flaky@1", func(_ context.Context, task *tideflow.Task) (any, error) {
		var in struct {
			FailAttempts int `json:"fail_attempts"`
		}
		if err := task.DecodeInput(&in); err != nil {
			return nil, err
		}
		if task.Attempt <= in.FailAttempts {
			return nil, tideflow.NewApplicationError("Flaky", fmt.Sprintf("attempt %d failed", task.Attempt), false)
		}
		return map[string]any{"attempt": task.Attempt}, nil
	})
	w.Register("conf.fatal@1", func(_ context.Context, task *tideflow.Task) (any, error) {
		var in struct {
			Reason string `json:"reason"`
		}
		if err := task.DecodeInput(&in); err != nil {
			return nil, err
		}
		return nil, tideflow.NewApplicationError("Fatal", "fatal: "+in.Reason, true, task.Input)
	})
	w.Register("conf.wait_cancel@1", func(ctx context.Context, task *tideflow.Task) (any, error) {
		ticker := time.NewTicker(100 * time.Millisecond)
		defer ticker.Stop()
		for beats := 1; ; beats++ {
			task.Heartbeat(map[string]int{"beats": beats})
			select {
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			case <-ticker.C:
			}
		}
	})
	w.Register("conf.stall@1", func(ctx context.Context, task *tideflow.Task) (any, error) {
		if task.Attempt >= 2 {
			return map[string]any{"attempt": task.Attempt, "resumed": task.HeartbeatDetails}, nil
		}
		task.Heartbeat(map[string]int{"progress": 1})
		<-ctx.Done()
		return nil, context.Cause(ctx)
	})
	w.Register("conf.big@1", func(_ context.Context, task *tideflow.Task) (any, error) {
		var in struct {
			Size int `json:"size"`
		}
		if err := task.DecodeInput(&in); err != nil {
			return nil, err
		}
		return map[string]string{"blob": strings.Repeat("x", in.Size)}, nil
	})
	w.Register("conf.slow@1", func(_ context.Context, task *tideflow.Task) (any, error) {
		var in struct {
			Ms int `json:"ms"`
		}
		if err := task.DecodeInput(&in); err != nil {
			return nil, err
		}
		task.Heartbeat(map[string]bool{"running": true}) // running here, not just recorded as started
		time.Sleep(time.Duration(in.Ms) * time.Millisecond)
		return map[string]int{"slept_ms": in.Ms}, nil
	})
}
