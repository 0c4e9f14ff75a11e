package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
)

// PathMetrics is GET /v1/metrics: the node's metrics in Prometheus's text
// format, for the read token (design section 12).
const PathMetrics = "/v1/metrics"

// Metrics fetches the metrics of the agent at addr as the agent wrote them
// (Prometheus's text format).
func (c *Client) Metrics(ctx context.Context, addr string) ([]byte, error) {
	var out []byte
	err := c.roundTrip(ctx, http.MethodGet, addr, PathMetrics, nil, func(resp *http.Response, data []byte) error {
		if resp.StatusCode != http.StatusOK {
			var e struct {
				Error *Error `json:"error"`
			}
			if json.Unmarshal(data, &e) == nil && e.Error != nil {
				return e.Error.errWith(resp.StatusCode)
			}
			return statusError(resp.StatusCode, bytes.TrimSpace(data))
		}
		out = data
		return nil
	})
	return out, err
}
