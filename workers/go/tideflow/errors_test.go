package tideflow

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"
)

func TestAnApplicationErrorKeepsItsTypeFlagAndDetails(t *testing.T) {
	failure := failureOf(NewApplicationError("Fatal", "fatal: bad scan", true, map[string]string{"reason": "bad scan"}))
	info := failure.GetApplicationFailureInfo()
	if failure.GetMessage() != "fatal: bad scan" || failure.GetSource() != "go" {
		t.Fatalf("failure %v", failure)
	}
	if info.GetType() != "Fatal" || !info.GetNonRetryable() {
		t.Fatalf("info %v", info)
	}
	var details map[string]string
	if err := DecodeJSON(info.GetDetails(), &details); err != nil || details["reason"] != "bad scan" {
		t.Fatalf("details %v, %v", details, err)
	}
}

func TestAWrappedApplicationErrorDecidesTypeAndRetry(t *testing.T) {
	err := fmt.Errorf("reading page 3: %w", NewApplicationError("Fatal", "corrupt", true))
	failure := failureOf(err)
	if failure.GetMessage() != "reading page 3: Fatal: corrupt" {
		t.Fatalf("message %q", failure.GetMessage())
	}
	if info := failure.GetApplicationFailureInfo(); info.GetType() != "Fatal" || !info.GetNonRetryable() {
		t.Fatalf("info %v", info)
	}
}

func TestAPlainErrorIsRetryableTypedByItsGoTypeWithItsChain(t *testing.T) {
	err := fmt.Errorf("open: %w", &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrNotExist})
	failure := failureOf(err)
	info := failure.GetApplicationFailureInfo()
	if info.GetType() != "*fmt.wrapError" || info.GetNonRetryable() {
		t.Fatalf("info %v", info)
	}
	if cause := failure.GetCause().GetApplicationFailureInfo().GetType(); cause != "*fs.PathError" {
		t.Fatalf("cause type %q", cause)
	}
}

func TestAPanicFailsWithItsStack(t *testing.T) {
	_, err := call(t.Context(), func(_ context.Context, _ *Task) (any, error) {
		panic("boom")
	}, &Task{})
	failure := failureOf(err)
	if failure.GetApplicationFailureInfo().GetType() != "Panic" || !strings.Contains(failure.GetStackTrace(), "errors_test.go") {
		t.Fatalf("failure %v", failure)
	}
	if !errors.As(err, new(*panicError)) {
		t.Fatal("not a panic error")
	}
}

func TestCauseChainsAreBounded(t *testing.T) {
	var err error = errors.New("root")
	for i := range 20 {
		err = fmt.Errorf("level %d: %w", i, err)
	}
	depth := 0
	for f := failureOf(err); f != nil; f = f.GetCause() {
		depth++
	}
	if depth != maxCauses+1 {
		t.Fatalf("depth %d, want %d", depth, maxCauses+1)
	}
}
