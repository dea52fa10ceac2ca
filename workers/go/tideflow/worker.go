// Package tideflow is a Tideflow block worker: it polls a task queue through the FlowService
// stubs generated from proto/, runs registered block functions with a slot limit, heartbeats,
// delivers cancellation through context.Context, and drains gracefully. docs/workers.md is
// the protocol it implements.
package tideflow

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	tideflowv1 "github.com/tideflow/tideflow/workers/go/gen/tideflow/api/v1"
)

// BlockFunc runs one attempt of a block. Its result is sent as one JSON value; an error fails
// the attempt (see ApplicationError). ctx is cancelled when the server asks the block to
// cancel (cause ErrCancelRequested) or the worker's drain timeout passes (ErrDrainTimeout).
type BlockFunc func(ctx context.Context, task *Task) (any, error)

// Options configure a Worker. Zero values take the defaults named.
type Options struct {
	Namespace string // "default"
	TaskQueue string // required
	Identity  string // "hostname:pid"
	// MaxConcurrent is how many blocks run at once (10); a poll runs only when a slot is free.
	MaxConcurrent int
	// Pollers is how many polls are outstanding at most (min(MaxConcurrent, 4)).
	Pollers int
	// HeartbeatInterval is the most often a block's heartbeats are sent (1 s, or 0.8 x the
	// block's heartbeat timeout when that is shorter).
	HeartbeatInterval time.Duration
	// DrainTimeout is how long a shutdown waits for running blocks before cancelling them (30 s).
	DrainTimeout time.Duration
	// NoSticky turns off the worker's own sticky queue. By default the worker names one (its
	// identity and a random suffix), polls it too and names it on its polls and completions,
	// so blocks with `affinity: run` and an `affinity_key` it owns come to it first.
	NoSticky bool
	// WarmKeys are affinity keys whose state the worker holds warm (at most 100): tasks with
	// them prefer this worker. Sent on every poll of the normal queue.
	WarmKeys []string
	Logger   *slog.Logger
}

const (
	pollTimeout  = 90 * time.Second // the server answers an idle poll after 60 s
	rpcTimeout   = 10 * time.Second
	respondFor   = 60 * time.Second // how long an answer keeps retrying while the server is away
	backoffFirst = 100 * time.Millisecond
	backoffMax   = 5 * time.Second
)

// Worker serves registered blocks on one task queue.
type Worker struct {
	client  tideflowv1.FlowServiceClient
	opts    Options
	sticky  string
	blocks  map[string]BlockFunc
	log     *slog.Logger
	slots   chan struct{}
	running sync.WaitGroup
}

// New returns a worker that calls the FlowService over conn.
func New(conn grpc.ClientConnInterface, opts Options) (*Worker, error) {
	if opts.TaskQueue == "" {
		return nil, errors.New("tideflow: Options.TaskQueue is required")
	}
	if opts.Namespace == "" {
		opts.Namespace = "default"
	}
	if opts.Identity == "" {
		host, _ := os.Hostname()
		opts.Identity = fmt.Sprintf("%s:%d", host, os.Getpid())
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 10
	}
	if opts.Pollers <= 0 {
		opts.Pollers = min(opts.MaxConcurrent, 4)
	}
	if opts.HeartbeatInterval <= 0 {
		opts.HeartbeatInterval = time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	sticky := ""
	if !opts.NoSticky {
		sticky = stickyQueueName(opts.Identity)
	}
	return &Worker{
		client: tideflowv1.NewFlowServiceClient(conn),
		opts:   opts,
		sticky: sticky,
		blocks: map[string]BlockFunc{},
		log:    logger.With("task_queue", opts.TaskQueue, "identity", opts.Identity),
		slots:  make(chan struct{}, opts.MaxConcurrent),
	}, nil
}

// Register serves blockType ("name@version") with fn. Call it before Run.
func (w *Worker) Register(blockType string, fn BlockFunc) {
	w.blocks[blockType] = fn
}

// Run polls until ctx is done, then drains: outstanding polls are abandoned, running blocks
// finish and are answered (their contexts are cancelled with ErrDrainTimeout once the drain
// timeout passes), and Run returns.
func (w *Worker) Run(ctx context.Context) error {
	blockCtx, cancelBlocks := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancelBlocks(nil)
	var pollers sync.WaitGroup
	poll := func(request *tideflowv1.PollBlockTaskRequest) {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			w.pollLoop(ctx, blockCtx, request)
		}()
	}
	normal := &tideflowv1.PollBlockTaskRequest{
		Namespace:       w.opts.Namespace,
		TaskQueue:       &tideflowv1.TaskQueue{Name: w.opts.TaskQueue},
		Identity:        w.opts.Identity,
		StickyTaskQueue: w.sticky,
		WarmKeys:        w.opts.WarmKeys,
	}
	for range w.opts.Pollers {
		poll(normal)
	}
	if w.sticky != "" {
		// Half as many again on the sticky queue (at least one), each holding a free slot too.
		sticky := &tideflowv1.PollBlockTaskRequest{
			Namespace: w.opts.Namespace,
			TaskQueue: &tideflowv1.TaskQueue{Name: w.sticky, Kind: tideflowv1.TaskQueueKind_TASK_QUEUE_KIND_STICKY},
			Identity:  w.opts.Identity,
		}
		for range (w.opts.Pollers + 1) / 2 {
			poll(sticky)
		}
	}
	pollers.Wait()
	w.log.Info("draining", "drain_timeout", w.opts.DrainTimeout)
	done := make(chan struct{})
	go func() {
		w.running.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(w.opts.DrainTimeout):
		cancelBlocks(ErrDrainTimeout)
		<-done
	}
	w.log.Info("stopped")
	return nil
}

// pollLoop takes a slot, polls, and hands a task to its own goroutine, until ctx is done.
func (w *Worker) pollLoop(ctx, blockCtx context.Context, request *tideflowv1.PollBlockTaskRequest) {
	delay := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case w.slots <- struct{}{}:
		}
		response, err := w.poll(ctx, request)
		if err != nil || len(response.GetTaskToken()) == 0 {
			<-w.slots
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				delay = backoff(delay)
				w.log.Warn("poll failed", "error", err, "retry_in", delay)
				sleep(ctx, delay)
			}
			continue
		}
		delay = 0
		w.running.Add(1)
		go func() {
			defer func() {
				<-w.slots
				w.running.Done()
			}()
			w.execute(blockCtx, response)
		}()
	}
}

func (w *Worker) poll(ctx context.Context, request *tideflowv1.PollBlockTaskRequest) (*tideflowv1.PollBlockTaskResponse, error) {
	pollCtx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	return w.client.PollBlockTask(pollCtx, request)
}

// StickyTaskQueue is the name of the worker's own sticky queue ("" with NoSticky).
func (w *Worker) StickyTaskQueue() string { return w.sticky }

// stickyQueueName is a queue name unique to this process: the identity, as far as a queue
// name may spell it, and a random suffix.
func stickyQueueName(identity string) string {
	readable := strings.Trim(queueNameChars.ReplaceAllString(identity, "-"), "-")
	if len(readable) > 200 {
		readable = readable[:200]
	}
	if readable == "" {
		readable = "worker"
	}
	var suffix [16]byte
	_, _ = crand.Read(suffix[:])
	return readable + "-" + hex.EncodeToString(suffix[:])
}

var queueNameChars = regexp.MustCompile(`[^A-Za-z0-9._:/-]+`)

// execute runs one attempt and answers it: completed, failed, or canceled when the server
// asked for it while the block ran.
func (w *Worker) execute(blockCtx context.Context, response *tideflowv1.PollBlockTaskResponse) {
	task, err := taskFrom(response)
	if err != nil {
		w.fail(response.GetTaskToken(), response, NewApplicationError("BadInput", err.Error(), true), nil)
		return
	}
	fn, ok := w.blocks[task.BlockType]
	if !ok {
		unknown := NewApplicationError("UnknownBlockType",
			fmt.Sprintf("no block type %q on worker %s", task.BlockType, w.opts.Identity), true)
		w.fail(task.token, response, unknown, nil)
		return
	}
	ctx, cancel := context.WithCancelCause(blockCtx)
	defer cancel(nil)
	interval := w.opts.HeartbeatInterval
	if task.HeartbeatTimeout > 0 {
		interval = min(interval, task.HeartbeatTimeout*4/5)
	}
	cancelRequested := make(chan struct{})
	var once sync.Once
	task.heartbeats = newHeartbeater(interval, func(hctx context.Context, details any) bool {
		return w.heartbeat(hctx, task.token, details)
	}, func() {
		once.Do(func() { close(cancelRequested) })
		cancel(ErrCancelRequested)
	})
	heartbeatCtx, stopHeartbeats := context.WithCancel(blockCtx)
	go task.heartbeats.run(heartbeatCtx)
	result, err := call(ctx, fn, task)
	stopHeartbeats()
	details, hasDetails := task.heartbeats.last()
	select {
	case <-cancelRequested:
		w.canceled(task, details)
		return
	default:
	}
	if err != nil {
		var last *tideflowv1.Payloads
		if hasDetails {
			last, _ = EncodeJSON(details)
		}
		w.fail(task.token, response, err, last)
		return
	}
	w.complete(task, response, result)
}

// call runs fn, turning a panic into an error with its stack.
func call(ctx context.Context, fn BlockFunc, task *Task) (result any, err error) {
	defer func() {
		if value := recover(); value != nil {
			result, err = nil, recovered(value)
		}
	}()
	return fn(ctx, task)
}

func (w *Worker) heartbeat(ctx context.Context, token []byte, details any) bool {
	payloads, err := EncodeJSON(details)
	if err != nil {
		w.log.Error("heartbeat details are not JSON", "error", err)
		return false
	}
	callCtx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	reply, err := w.client.RecordBlockHeartbeat(callCtx, &tideflowv1.RecordBlockHeartbeatRequest{
		Namespace: w.opts.Namespace, TaskToken: token, Details: payloads, Identity: w.opts.Identity,
	})
	if err != nil {
		// NOT_FOUND: the attempt is over (timed out, or the run closed); the block learns
		// nothing more from the server and its answer will be dropped.
		w.log.Debug("heartbeat failed", "error", err)
		return false
	}
	return reply.GetCancelRequested()
}

func (w *Worker) complete(task *Task, response *tideflowv1.PollBlockTaskResponse, result any) {
	payloads, err := EncodeJSON(result)
	if err != nil {
		w.fail(task.token, response, NewApplicationError("ResultNotJSON", err.Error(), true), nil)
		return
	}
	err = w.respond("completion", response, func(ctx context.Context) error {
		_, err := w.client.RespondBlockCompleted(ctx, &tideflowv1.RespondBlockCompletedRequest{
			Namespace: w.opts.Namespace, TaskToken: task.token, Result: payloads, Identity: w.opts.Identity,
			StickyTaskQueue: w.sticky,
		})
		return err
	})
	if status.Code(err) == codes.InvalidArgument {
		// The server refused the result (e.g. it makes the step too big); the block stays open,
		// so fail it with the reason instead of leaving it to time out.
		rejected := NewApplicationError("ResultRejected", status.Convert(err).Message(), true)
		w.fail(task.token, response, rejected, nil)
	}
}

func (w *Worker) fail(token []byte, response *tideflowv1.PollBlockTaskResponse, err error, details *tideflowv1.Payloads) {
	failure := failureOf(err)
	_ = w.respond("failure", response, func(ctx context.Context) error {
		_, err := w.client.RespondBlockFailed(ctx, &tideflowv1.RespondBlockFailedRequest{
			Namespace: w.opts.Namespace, TaskToken: token, Failure: failure,
			LastHeartbeatDetails: details, Identity: w.opts.Identity,
		})
		return err
	})
}

func (w *Worker) canceled(task *Task, details any) {
	payloads, err := EncodeJSON(details)
	if err != nil {
		payloads = nil
	}
	_ = w.respond("cancellation", nil, func(ctx context.Context) error {
		_, err := w.client.RespondBlockCanceled(ctx, &tideflowv1.RespondBlockCanceledRequest{
			Namespace: w.opts.Namespace, TaskToken: task.token, Details: payloads, Identity: w.opts.Identity,
		})
		return err
	})
}

// respond makes one answer, retrying UNAVAILABLE and DEADLINE_EXCEEDED with backoff, and
// RESOURCE_EXHAUSTED after its RetryInfo delay, for up to respondFor. NOT_FOUND (the attempt is no longer current) is dropped.
// It returns the last error, nil when answered or dropped.
func (w *Worker) respond(what string, response *tideflowv1.PollBlockTaskResponse, rpc func(context.Context) error) error {
	deadline := time.Now().Add(respondFor)
	delay := time.Duration(0)
	// The run's trace goes on through this answer: the attempt's trace context (W3C headers)
	// as its metadata, so the server's span for it is a child of the block's schedule.
	base := context.Background()
	for key, value := range response.GetTraceContext() {
		base = metadata.AppendToOutgoingContext(base, key, value)
	}
	for {
		ctx, cancel := context.WithTimeout(base, rpcTimeout)
		err := rpc(ctx)
		cancel()
		code := status.Code(err)
		switch {
		case err == nil:
			return nil
		case code == codes.NotFound:
			w.log.Info(what+" dropped: attempt no longer current", "block", response.GetBlockId(),
				"run", response.GetRun().GetRunId())
			return nil
		case !retryable(code) || time.Now().After(deadline):
			w.log.Error(what+" failed", "block", response.GetBlockId(), "run",
				response.GetRun().GetRunId(), "code", code, "error", err)
			return err
		}
		delay = backoff(delay)
		if wait, ok := retryDelay(err); ok {
			delay = wait // a rate limit says when a token will be there
		}
		time.Sleep(delay)
	}
}

// retryDelay is the google.rpc.RetryInfo of a RESOURCE_EXHAUSTED status, if it has one.
func retryDelay(err error) (time.Duration, bool) {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			return info.GetRetryDelay().AsDuration(), true
		}
	}
	return 0, false
}

func retryable(code codes.Code) bool {
	return code == codes.Unavailable || code == codes.DeadlineExceeded || code == codes.ResourceExhausted
}

// backoff doubles the previous delay up to the cap, with jitter so workers do not retry in step.
func backoff(previous time.Duration) time.Duration {
	next := min(max(previous*2, backoffFirst), backoffMax)
	return time.Duration(float64(next) * (0.8 + 0.4*rand.Float64()))
}

func sleep(ctx context.Context, d time.Duration) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
}
