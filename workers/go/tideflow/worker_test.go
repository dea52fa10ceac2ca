package tideflow

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	tideflowv1 "github.com/tideflow/tideflow/workers/go/gen/tideflow/api/v1"
)

// fakeFrontend is a FlowService over a real loopback gRPC server: it hands out the queued
// tasks, then holds polls until the caller gives up, and records the worker's answers.
type fakeFrontend struct {
	tideflowv1.UnimplementedFlowServiceServer
	tasks       chan *tideflowv1.PollBlockTaskResponse
	cancelAfter int // heartbeats answered before one asks to cancel; 0: never

	mu           sync.Mutex
	heartbeats   int
	polls        []*tideflowv1.PollBlockTaskRequest
	answers      chan any
	traceparents []string // of the completions, as their metadata carried it
}

func (f *fakeFrontend) PollBlockTask(ctx context.Context, r *tideflowv1.PollBlockTaskRequest) (*tideflowv1.PollBlockTaskResponse, error) {
	f.mu.Lock()
	f.polls = append(f.polls, r)
	f.mu.Unlock()
	select {
	case task := <-f.tasks:
		return task, nil
	case <-ctx.Done():
		return &tideflowv1.PollBlockTaskResponse{}, nil
	}
}

func (f *fakeFrontend) RespondBlockCompleted(ctx context.Context, r *tideflowv1.RespondBlockCompletedRequest) (*tideflowv1.RespondBlockCompletedResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.traceparents = append(f.traceparents, md.Get("traceparent")...)
	f.mu.Unlock()
	f.answers <- r
	return &tideflowv1.RespondBlockCompletedResponse{}, nil
}

func (f *fakeFrontend) RespondBlockFailed(_ context.Context, r *tideflowv1.RespondBlockFailedRequest) (*tideflowv1.RespondBlockFailedResponse, error) {
	f.answers <- r
	return &tideflowv1.RespondBlockFailedResponse{}, nil
}

func (f *fakeFrontend) RespondBlockCanceled(_ context.Context, r *tideflowv1.RespondBlockCanceledRequest) (*tideflowv1.RespondBlockCanceledResponse, error) {
	f.answers <- r
	return &tideflowv1.RespondBlockCanceledResponse{}, nil
}

func (f *fakeFrontend) RecordBlockHeartbeat(context.Context, *tideflowv1.RecordBlockHeartbeatRequest) (*tideflowv1.RecordBlockHeartbeatResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heartbeats++
	return &tideflowv1.RecordBlockHeartbeatResponse{CancelRequested: f.cancelAfter > 0 && f.heartbeats >= f.cancelAfter}, nil
}

func serve(t *testing.T, fake *fakeFrontend) *grpc.ClientConn {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	tideflowv1.RegisterFlowServiceServer(server, fake)
	go func() { _ = server.Serve(listener) }()
	t.Cleanup(server.Stop)
	conn, err := grpc.NewClient(listener.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func newFake(tasks ...*tideflowv1.PollBlockTaskResponse) *fakeFrontend {
	fake := &fakeFrontend{tasks: make(chan *tideflowv1.PollBlockTaskResponse, len(tasks)), answers: make(chan any, 10)}
	for _, task := range tasks {
		fake.tasks <- task
	}
	return fake
}

func task(blockType string, input any) *tideflowv1.PollBlockTaskResponse {
	payloads, _ := EncodeJSON(input)
	return &tideflowv1.PollBlockTaskResponse{
		TaskToken: []byte("token-" + blockType), BlockId: "b", BlockType: blockType, Input: payloads, Attempt: 1,
		Run: &tideflowv1.RunRef{RunId: "r1"},
	}
}

func start(t *testing.T, fake *fakeFrontend, register func(*Worker), opts Options) (stop func()) {
	t.Helper()
	opts.TaskQueue = "q"
	worker, err := New(serve(t, fake), opts)
	if err != nil {
		t.Fatal(err)
	}
	register(worker)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		_ = worker.Run(ctx)
		close(done)
	}()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Run did not return after its context was done")
		}
	}
}

func answer(t *testing.T, fake *fakeFrontend) any {
	t.Helper()
	select {
	case got := <-fake.answers:
		return got
	case <-time.After(10 * time.Second):
		t.Fatal("no answer from the worker")
		return nil
	}
}

func TestATaskIsRunAndCompletedWithItsResult(t *testing.T) {
	fake := newFake(task("double@1", map[string]int{"n": 21}))
	stop := start(t, fake, func(w *Worker) {
		w.Register("double@1", func(_ context.Context, task *Task) (any, error) {
			var in struct{ N int }
			if err := task.DecodeInput(&in); err != nil {
				return nil, err
			}
			return map[string]int{"n": in.N * 2}, nil
		})
	}, Options{})
	defer stop()
	completed, ok := answer(t, fake).(*tideflowv1.RespondBlockCompletedRequest)
	if !ok {
		t.Fatal("not a completion")
	}
	var out map[string]int
	if err := DecodeJSON(completed.GetResult(), &out); err != nil || out["n"] != 42 {
		t.Fatalf("result %v, %v", out, err)
	}
	if string(completed.GetTaskToken()) != "token-double@1" {
		t.Fatalf("token %q", completed.GetTaskToken())
	}
}

func TestAnAnswerCarriesTheAttemptsTraceContext(t *testing.T) {
	traced := task("echo@1", 1)
	parent := "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	traced.TraceContext = map[string]string{"traceparent": parent}
	fake := newFake(traced)
	stop := start(t, fake, func(w *Worker) {
		w.Register("echo@1", func(_ context.Context, task *Task) (any, error) { return 1, nil })
	}, Options{})
	defer stop()
	answer(t, fake)
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.traceparents) != 1 || fake.traceparents[0] != parent {
		t.Fatalf("traceparent on the completion: %v", fake.traceparents)
	}
}

func TestAnUnknownBlockTypeFailsNonRetryable(t *testing.T) {
	fake := newFake(task("nope@1", nil))
	stop := start(t, fake, func(*Worker) {}, Options{})
	defer stop()
	failed, ok := answer(t, fake).(*tideflowv1.RespondBlockFailedRequest)
	if !ok {
		t.Fatal("not a failure")
	}
	if info := failed.GetFailure().GetApplicationFailureInfo(); info.GetType() != "UnknownBlockType" || !info.GetNonRetryable() {
		t.Fatalf("failure %v", failed.GetFailure())
	}
}

func TestAHeartbeatReplyAskingToCancelCancelsTheBlock(t *testing.T) {
	fake := newFake(task("wait@1", nil))
	fake.cancelAfter = 2
	stop := start(t, fake, func(w *Worker) {
		w.Register("wait@1", func(ctx context.Context, task *Task) (any, error) {
			for beats := 1; ; beats++ {
				task.Heartbeat(beats)
				select {
				case <-ctx.Done():
					if context.Cause(ctx) != ErrCancelRequested {
						t.Errorf("cause %v", context.Cause(ctx))
					}
					return nil, ctx.Err()
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
	}, Options{HeartbeatInterval: 10 * time.Millisecond})
	defer stop()
	canceled, ok := answer(t, fake).(*tideflowv1.RespondBlockCanceledRequest)
	if !ok {
		t.Fatal("not a cancellation")
	}
	var beats int
	if err := DecodeJSON(canceled.GetDetails(), &beats); err != nil || beats < 2 {
		t.Fatalf("details %d, %v", beats, err)
	}
}

func TestShutdownLetsARunningBlockFinish(t *testing.T) {
	fake := newFake(task("slow@1", nil))
	running := make(chan struct{})
	stop := start(t, fake, func(w *Worker) {
		w.Register("slow@1", func(ctx context.Context, _ *Task) (any, error) {
			close(running)
			time.Sleep(200 * time.Millisecond)
			return "done", ctx.Err()
		})
	}, Options{DrainTimeout: 5 * time.Second})
	<-running
	stop() // returns only once the block has been answered
	completed, ok := answer(t, fake).(*tideflowv1.RespondBlockCompletedRequest)
	if !ok {
		t.Fatal("the running block was not completed")
	}
	var out string
	if err := DecodeJSON(completed.GetResult(), &out); err != nil || out != "done" {
		t.Fatalf("result %q, %v", out, err)
	}
}

func TestTheSlotLimitBoundsRunningBlocks(t *testing.T) {
	tasks := make([]*tideflowv1.PollBlockTaskResponse, 6)
	for i := range tasks {
		tasks[i] = task("count@1", i)
	}
	fake := newFake(tasks...)
	var mu sync.Mutex
	running, most := 0, 0
	stop := start(t, fake, func(w *Worker) {
		w.Register("count@1", func(context.Context, *Task) (any, error) {
			mu.Lock()
			running++
			most = max(most, running)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			mu.Lock()
			running--
			mu.Unlock()
			return nil, nil
		})
	}, Options{MaxConcurrent: 2, Pollers: 2})
	defer stop()
	for range tasks {
		answer(t, fake)
	}
	if most > 2 {
		t.Fatalf("%d blocks ran at once with 2 slots", most)
	}
}

func TestARateLimitedAnswerWaitsTheServersRetryDelay(t *testing.T) {
	st, err := status.New(codes.ResourceExhausted, "namespace over its rate limit").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
	if err != nil {
		t.Fatal(err)
	}
	if wait, ok := retryDelay(st.Err()); !ok || wait != 1500*time.Millisecond {
		t.Fatalf("retry delay %v, %v", wait, ok)
	}
	if _, ok := retryDelay(status.Error(codes.Unavailable, "away")); ok {
		t.Fatal("a status without RetryInfo has a delay")
	}
}

func TestTheWorkerPollsItsOwnStickyQueueAndNamesItOnPollsAndCompletions(t *testing.T) {
	fake := newFake(task("echo@1", 1))
	var worker *Worker
	stop := start(t, fake, func(w *Worker) {
		worker = w
		w.Register("echo@1", func(_ context.Context, task *Task) (any, error) { return task.Input, nil })
	}, Options{Identity: "host:42", WarmKeys: []string{"digits"}})
	defer stop()
	completed, ok := answer(t, fake).(*tideflowv1.RespondBlockCompletedRequest)
	if !ok {
		t.Fatal("not a completion")
	}
	sticky := worker.StickyTaskQueue()
	if !strings.HasPrefix(sticky, "host:42-") || completed.GetStickyTaskQueue() != sticky {
		t.Fatalf("sticky queue %q, completion named %q", sticky, completed.GetStickyTaskQueue())
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		fake.mu.Lock()
		var normal, onSticky int
		for _, poll := range fake.polls {
			switch {
			case poll.GetTaskQueue().GetName() == "q" && poll.GetStickyTaskQueue() == sticky && poll.GetWarmKeys()[0] == "digits":
				normal++
			case poll.GetTaskQueue().GetName() == sticky && poll.GetTaskQueue().GetKind() == tideflowv1.TaskQueueKind_TASK_QUEUE_KIND_STICKY:
				onSticky++
			}
		}
		fake.mu.Unlock()
		if normal > 0 && onSticky > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d normal polls naming the sticky queue, %d sticky polls", normal, onSticky)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
