package tideflow

import (
	"errors"
	"fmt"
	"reflect"
	"runtime/debug"

	tideflowv1 "github.com/tideflow/tideflow/workers/go/gen/tideflow/api/v1"
)

// Source is what this library writes as Failure.source.
const Source = "go"

// maxCauses bounds the wrapped errors sent with a failure (the server takes 16).
const maxCauses = 8

// ApplicationError is a block's failure with a type that `catch` and a retry policy's
// non_retryable_error_types match on. NonRetryable stops retries whatever the policy says.
type ApplicationError struct {
	Type         string
	Message      string
	NonRetryable bool
	// Details are JSON values sent with the failure (one payload each).
	Details []any
	// Cause, when set, is sent as the failure's cause.
	Cause error
}

// NewApplicationError returns an application error of errorType.
func NewApplicationError(errorType, message string, nonRetryable bool, details ...any) *ApplicationError {
	return &ApplicationError{Type: errorType, Message: message, NonRetryable: nonRetryable, Details: details}
}

func (e *ApplicationError) Error() string {
	if e.Type == "" {
		return e.Message
	}
	return e.Type + ": " + e.Message
}

// Unwrap returns the cause, so errors.Is and errors.As see through it.
func (e *ApplicationError) Unwrap() error { return e.Cause }

// panicError is a recovered panic, failed with its stack.
type panicError struct {
	value any
	stack string
}

func (e *panicError) Error() string { return fmt.Sprintf("panic: %v", e.value) }

func recovered(value any) error {
	return &panicError{value: value, stack: string(debug.Stack())}
}

// failureOf converts an error returned by a block (or a recovered panic) into a Failure: an
// ApplicationError in the chain gives its type, flags and details; any other error is
// retryable, typed by its Go type name (e.g. "*fs.PathError"), and what it wraps becomes the
// cause chain.
func failureOf(err error) *tideflowv1.Failure {
	return failureAt(err, 0)
}

func failureAt(err error, depth int) *tideflowv1.Failure {
	info := &tideflowv1.ApplicationFailureInfo{Type: typeName(err)}
	failure := &tideflowv1.Failure{Message: err.Error(), Source: Source}
	var next error
	var app *ApplicationError
	var pe *panicError
	switch {
	case errors.As(err, &app):
		// An application error anywhere in the chain (fmt.Errorf("...: %w", appErr)) decides
		// the type and the retry flag; the message keeps the context the wrapping added.
		if app == err {
			failure.Message = app.Message
		}
		info.Type = app.Type
		info.NonRetryable = app.NonRetryable
		if details, derr := encodeDetails(app.Details); derr == nil {
			info.Details = details
		}
		next = app.Cause
	case errors.As(err, &pe) && pe == err:
		info.Type = "Panic"
		failure.StackTrace = pe.stack
	default:
		next = errors.Unwrap(err)
	}
	failure.FailureInfo = &tideflowv1.Failure_ApplicationFailureInfo{ApplicationFailureInfo: info}
	if next != nil && depth < maxCauses {
		failure.Cause = failureAt(next, depth+1)
	}
	return failure
}

func typeName(err error) string {
	if t := reflect.TypeOf(err); t != nil {
		return t.String()
	}
	return "error"
}

func encodeDetails(details []any) (*tideflowv1.Payloads, error) {
	if len(details) == 0 {
		return nil, nil
	}
	out := &tideflowv1.Payloads{}
	for _, detail := range details {
		encoded, err := EncodeJSON(detail)
		if err != nil {
			return nil, err
		}
		out.Payloads = append(out.Payloads, encoded.GetPayloads()...)
	}
	return out, nil
}
