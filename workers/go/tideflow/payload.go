package tideflow

import (
	"encoding/json"
	"fmt"

	tideflowv1 "github.com/tideflow/tideflow/workers/go/gen/tideflow/api/v1"
)

// Payload encodings every Tideflow SDK understands (see Payload in common.proto).
const (
	EncodingJSON   = "json/plain"
	EncodingNull   = "binary/null"
	EncodingBinary = "binary/plain"
	metadataKey    = "encoding"
)

// EncodeJSON turns one value into Payloads holding one payload: JSON ("json/plain") for any
// value, "binary/null" for nil. A json.RawMessage is sent as it is.
func EncodeJSON(value any) (*tideflowv1.Payloads, error) {
	if value == nil {
		return nullPayloads(), nil
	}
	var data []byte
	switch v := value.(type) {
	case json.RawMessage:
		if len(v) == 0 || string(v) == "null" {
			return nullPayloads(), nil
		}
		data = v
	default:
		encoded, err := json.Marshal(value)
		if err != nil {
			return nil, fmt.Errorf("tideflow: encode payload: %w", err)
		}
		if string(encoded) == "null" {
			return nullPayloads(), nil
		}
		data = encoded
	}
	return &tideflowv1.Payloads{Payloads: []*tideflowv1.Payload{{
		Metadata: map[string][]byte{metadataKey: []byte(EncodingJSON)},
		Data:     data,
	}}}, nil
}

func nullPayloads() *tideflowv1.Payloads {
	return &tideflowv1.Payloads{Payloads: []*tideflowv1.Payload{{
		Metadata: map[string][]byte{metadataKey: []byte(EncodingNull)},
	}}}
}

// RawJSON returns the first payload as JSON: "null" for none or "binary/null". Other
// encodings are an error, since a block's input and heartbeat details are JSON values.
func RawJSON(payloads *tideflowv1.Payloads) (json.RawMessage, error) {
	if payloads == nil || len(payloads.GetPayloads()) == 0 {
		return json.RawMessage("null"), nil
	}
	first := payloads.GetPayloads()[0]
	switch encoding := string(first.GetMetadata()[metadataKey]); encoding {
	case EncodingNull:
		return json.RawMessage("null"), nil
	case EncodingJSON:
		if !json.Valid(first.GetData()) {
			return nil, fmt.Errorf("tideflow: payload is not JSON")
		}
		return json.RawMessage(first.GetData()), nil
	default:
		return nil, fmt.Errorf("tideflow: payload encoding %q is not JSON", encoding)
	}
}

// DecodeJSON decodes the first payload into out (as json.Unmarshal does); null leaves out
// untouched.
func DecodeJSON(payloads *tideflowv1.Payloads, out any) error {
	raw, err := RawJSON(payloads)
	if err != nil {
		return err
	}
	if string(raw) == "null" {
		return nil
	}
	return json.Unmarshal(raw, out)
}
