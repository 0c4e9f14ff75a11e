package cursor

import (
	"bytes"
	"encoding/json"
	"testing"
)

// referenceModelRecordID is the slow, obviously right reading of a payload
// with encoding/json, kept as the oracle for payloadModelRecordID.
func referenceModelRecordID(payload []byte) (id int64, hasID, isObject bool) {
	trimmed := bytes.TrimSpace(payload)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return 0, false, false
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(trimmed, &fields); err != nil {
		return 0, false, false
	}
	raw, ok := fields["model_record_id"]
	if !ok {
		return 0, false, true
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return 0, false, true
	}
	n, ok := v.(json.Number)
	if !ok {
		return 0, false, true
	}
	id, err := n.Int64()
	if err != nil {
		return 0, false, true
	}
	return id, true, true
}

var payloadCases = []string{
	`{"model_record_id": 42}`,
	`{"model_record_id":42}`,
	` {"a": {"model_record_id": 1}, "model_record_id" : -7 } `,
	`{"model_record_id": 9007199254740993}`,
	`{"model_record_id": 9223372036854775808}`,
	`{"model_record_id": -0}`,
	`{"model_record_id": 4.5}`,
	`{"model_record_id": 1e3}`,
	`{"model_record_id": "42"}`,
	`{"model_record_id": null}`,
	`{"model_record_id": true}`,
	`{"model_record_id": [1]}`,
	`{"model_record_id": {"id": 1}}`,
	`{"model_record_id": 1, "model_record_id": 2}`,
	`{"model_record_id": 1, "model_record_id": "x"}`,
	`{"model\u005frecord_id": 5}`,
	`{"Model_Record_Id": 5}`,
	`{"x": "a\"}model_record_id", "y": [{"z": "]"}], "model_record_id": 3}`,
	`{"note": "model_record_id deliberately missing"}`,
	`{}`,
	`{ }`,
	`[{"model_record_id": 1}]`,
	`"model_record_id"`,
	`{"model_record_id": 1`,
	`{"model_record_id": 01}`,
	``,
	`null`,
}

func TestPayloadModelRecordIDMatchesEncodingJSON(t *testing.T) {
	for _, c := range payloadCases {
		id, hasID, isObject := payloadModelRecordID([]byte(c))
		wid, whasID, wisObject := referenceModelRecordID([]byte(c))
		if id != wid || hasID != whasID || isObject != wisObject {
			t.Errorf("%s: got (%d, %v, %v), encoding/json says (%d, %v, %v)", c, id, hasID, isObject, wid, whasID, wisObject)
		}
	}
}

func FuzzPayloadModelRecordID(f *testing.F) {
	for _, c := range payloadCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		id, hasID, isObject := payloadModelRecordID(payload)
		wid, whasID, wisObject := referenceModelRecordID(payload)
		if id != wid || hasID != whasID || isObject != wisObject {
			t.Fatalf("%q: got (%d, %v, %v), encoding/json says (%d, %v, %v)", payload, id, hasID, isObject, wid, whasID, wisObject)
		}
	})
}

func BenchmarkClassify(b *testing.B) {
	events := make([]Event, 1000)
	for i := range events {
		events[i] = geo(int64(i+1), "project_repository", "updated", `{"model_record_id": 12345, "blob_path": "a/b/c"}`)
	}
	b.ReportAllocs()
	for b.Loop() {
		classify(events)
	}
}
