package tideflow

import (
	"encoding/json"
	"testing"
)

func TestEncodeJSONRoundTrips(t *testing.T) {
	for _, value := range []any{map[string]any{"a": 1.5, "b": []any{"x", nil}}, "text", 3.0, true} {
		payloads, err := EncodeJSON(value)
		if err != nil {
			t.Fatal(err)
		}
		if got := string(payloads.GetPayloads()[0].GetMetadata()["encoding"]); got != EncodingJSON {
			t.Fatalf("encoding %q, want %q", got, EncodingJSON)
		}
		var back any
		if err := DecodeJSON(payloads, &back); err != nil {
			t.Fatal(err)
		}
		want, _ := json.Marshal(value)
		have, _ := json.Marshal(back)
		if string(want) != string(have) {
			t.Fatalf("round trip: %s, want %s", have, want)
		}
	}
}

func TestNilAndNullEncodeAsBinaryNull(t *testing.T) {
	for _, value := range []any{nil, json.RawMessage("null"), json.RawMessage(nil)} {
		payloads, err := EncodeJSON(value)
		if err != nil {
			t.Fatal(err)
		}
		first := payloads.GetPayloads()[0]
		if string(first.GetMetadata()["encoding"]) != EncodingNull || len(first.GetData()) != 0 {
			t.Fatalf("%v encoded as %v", value, first)
		}
		raw, err := RawJSON(payloads)
		if err != nil || string(raw) != "null" {
			t.Fatalf("decoded as %q, %v", raw, err)
		}
	}
}

func TestRawJSONRefusesOtherEncodings(t *testing.T) {
	payloads, _ := EncodeJSON("x")
	payloads.GetPayloads()[0].Metadata["encoding"] = []byte(EncodingBinary)
	if _, err := RawJSON(payloads); err == nil {
		t.Fatal("binary/plain decoded as JSON")
	}
	if raw, err := RawJSON(nil); err != nil || string(raw) != "null" {
		t.Fatalf("no payloads: %q, %v", raw, err)
	}
}
