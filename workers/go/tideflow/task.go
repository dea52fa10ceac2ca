package tideflow

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	tideflowv1 "github.com/tideflow/tideflow/workers/go/gen/tideflow/api/v1"
)

// ErrCancelRequested is the cause of a block's context when the server asked the block to
// cancel (learned from a heartbeat reply): the block should stop and return; the worker then
// answers RespondBlockCanceled with the last heartbeat details.
var ErrCancelRequested = errors.New("tideflow: the server asked the block to cancel")

// ErrDrainTimeout is the cause of a block's context when the worker shut down and the block
// outlived the drain timeout.
var ErrDrainTimeout = errors.New("tideflow: worker shut down and the drain timeout passed")

// Task is one attempt of an external block, as a block function sees it.
type Task struct {
	RunID       string
	ExecutionID string
	BlockID     string
	BlockType   string
	// Attempt is 1 for the first attempt.
	Attempt int
	// Input is the block's rendered input, one JSON value.
	Input json.RawMessage
	// HeartbeatDetails are the last heartbeat's details of a previous attempt ("null" if none),
	// so a retry can resume.
	HeartbeatDetails json.RawMessage
	// HeartbeatTimeout is the block's heartbeat timeout; 0 when it has none.
	HeartbeatTimeout time.Duration

	token      []byte
	heartbeats *heartbeater
}

// DecodeInput decodes the block's input into out.
func (t *Task) DecodeInput(out any) error {
	if string(t.Input) == "null" {
		return nil
	}
	return json.Unmarshal(t.Input, out)
}

// Heartbeat records progress: the details reach the server at most once per heartbeat
// interval (the latest win), and a later attempt receives them as HeartbeatDetails. A reply
// asking to cancel cancels the block's context with ErrCancelRequested.
func (t *Task) Heartbeat(details any) {
	t.heartbeats.record(details)
}

// heartbeater sends one attempt's heartbeats from its own goroutine: at most one call per
// interval, always the latest details.
type heartbeater struct {
	send     func(ctx context.Context, details any) (cancel bool)
	interval time.Duration
	onCancel func()

	mu      sync.Mutex
	details any
	has     bool
	dirty   bool
	wake    chan struct{}
	started bool
}

func newHeartbeater(interval time.Duration, send func(context.Context, any) bool, onCancel func()) *heartbeater {
	return &heartbeater{send: send, interval: interval, onCancel: onCancel, wake: make(chan struct{}, 1)}
}

func (h *heartbeater) record(details any) {
	h.mu.Lock()
	h.details, h.has, h.dirty = details, true, true
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// last returns the latest recorded details and whether any were recorded.
func (h *heartbeater) last() (any, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.details, h.has
}

// run sends heartbeats until ctx is done.
func (h *heartbeater) run(ctx context.Context) {
	var lastSent time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wake:
		}
		if wait := h.interval - time.Since(lastSent); wait > 0 {
			timer := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				timer.Stop()
				return
			case <-timer.C:
			}
		}
		h.mu.Lock()
		details, dirty := h.details, h.dirty
		h.dirty = false
		h.mu.Unlock()
		if !dirty {
			continue
		}
		lastSent = time.Now()
		if h.send(ctx, details) {
			h.onCancel()
		}
	}
}

func taskFrom(response *tideflowv1.PollBlockTaskResponse) (*Task, error) {
	input, err := RawJSON(response.GetInput())
	if err != nil {
		return nil, err
	}
	details, err := RawJSON(response.GetHeartbeatDetails())
	if err != nil {
		details = json.RawMessage("null")
	}
	return &Task{
		RunID:            response.GetRun().GetRunId(),
		ExecutionID:      response.GetRun().GetExecutionId(),
		BlockID:          response.GetBlockId(),
		BlockType:        response.GetBlockType(),
		Attempt:          int(response.GetAttempt()),
		Input:            input,
		HeartbeatDetails: details,
		HeartbeatTimeout: response.GetTimeouts().GetHeartbeat().AsDuration(),
		token:            response.GetTaskToken(),
	}, nil
}
