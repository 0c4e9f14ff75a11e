package api

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/geocursor/geocursor/fsm"
)

// ClientOptions configure a Client.
type ClientOptions struct {
	// Timeout bounds one request, from the dial to the end of the answer;
	// 0 means DefaultTimeout. A context deadline applies as well.
	Timeout time.Duration
	// Retries is how many times a request that never reached the server
	// (the connection could not be made) is sent again, waiting Backoff in
	// between; 0 never sends it again.
	Retries int
	// Backoff is the wait between retries; the zero value means
	// 50ms doubling to 1s.
	Backoff Backoff
	// TLS, when set, is used for every connection, and an address without
	// a scheme means https.
	TLS *tls.Config
	// Token, when set, is sent with every request (Authorization: Bearer),
	// unless the request's context carries another (WithToken).
	Token string
}

// WithToken returns a context whose requests carry token instead of the
// client's own: a node forwarding an operator's command to the leader
// forwards the operator's token with it.
func WithToken(ctx context.Context, token string) context.Context {
	return context.WithValue(ctx, tokenKey{}, token)
}

type tokenKey struct{}

// WithServerCheck returns a context whose requests are sent only over a
// TLS connection whose state check accepts: a node forwarding to a member
// checks that the server's peer certificate names that member, before a
// byte of the request (and its token) goes out. A connection it refuses
// is closed, and the request fails with ErrPermissionDenied, not sent.
func WithServerCheck(ctx context.Context, check func(*tls.ConnectionState) error) context.Context {
	return context.WithValue(ctx, serverCheckKey{}, check)
}

type serverCheckKey struct{}

// TokenHeader is the other header a token may come in (design section 10).
const TokenHeader = "X-Geocursor-Token"

// BearerToken returns the token of r: from Authorization: Bearer, else
// from X-Geocursor-Token; "" when it has none.
func BearerToken(h http.Header) string {
	if v, ok := strings.CutPrefix(h.Get("Authorization"), "Bearer "); ok {
		return strings.TrimSpace(v)
	}
	return strings.TrimSpace(h.Get(TokenHeader))
}

// DefaultTimeout bounds a request when ClientOptions.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// Client is the one HTTP client of geocursor's API: the CLI, forwarding
// between peers, the member probes, the test harness and the scripts all
// go through it. Every request is one call of send, which encodes the
// body, sends it, and decodes the answer or its error object into the
// error of the table (errors.Is matches it). A request that never reached
// the server is sent again, up to Retries times; one that reached it is
// never sent again by the client, since a command could be applied twice:
// such a failure wraps ErrUnknownOutcome, and what to do is the caller's
// call. It is safe for concurrent use.
type Client struct {
	httpc   *http.Client
	retries int
	backoff Backoff
	scheme  string
	token   string
}

// NewClient returns a client with opts.
func NewClient(opts ClientOptions) *Client {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Backoff.Min <= 0 || opts.Backoff.Max <= 0 {
		opts.Backoff = Backoff{Min: 50 * time.Millisecond, Max: time.Second}
	}
	c := &Client{
		httpc:   &http.Client{Timeout: opts.Timeout},
		retries: opts.Retries,
		backoff: opts.Backoff,
		scheme:  "http://",
		token:   opts.Token,
	}
	if opts.TLS != nil {
		c.scheme = "https://"
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = opts.TLS
		// A TLS config with callbacks does not get HTTP/2 set up by
		// default; the API needs none.
		t.ForceAttemptHTTP2 = false
		c.httpc.Transport = t
	}
	return c
}

// Status fetches the status document of the agent at addr.
func (c *Client) Status(ctx context.Context, addr string) (Status, error) {
	var st Status
	err := c.send(ctx, http.MethodGet, addr, PathStatus, nil, &st, nil)
	return st, err
}

// StatusJSON fetches the status document as the agent wrote it.
func (c *Client) StatusJSON(ctx context.Context, addr string) ([]byte, error) {
	var raw json.RawMessage
	err := c.send(ctx, http.MethodGet, addr, PathStatus, nil, &raw, nil)
	return raw, err
}

// Health asks the agent at addr whether its process and Raft run.
func (c *Client) Health(ctx context.Context, addr string) (Health, error) {
	var h Health
	err := c.send(ctx, http.MethodGet, addr, PathHealth, nil, &h, nil)
	return h, err
}

// Ready asks the agent at addr whether it is ready; a node that is not
// answers with the reason, which is no error.
func (c *Client) Ready(ctx context.Context, addr string) (Ready, error) {
	var r Ready
	err := c.send(ctx, http.MethodGet, addr, PathReady, nil, &r, []int{http.StatusServiceUnavailable})
	return r, err
}

// Join asks the member at addr to add req's node to the group.
func (c *Client) Join(ctx context.Context, addr string, req JoinRequest) (JoinResponse, error) {
	var resp JoinResponse
	err := c.send(ctx, http.MethodPost, addr, PathJoin, req, &resp, nil)
	return resp, err
}

// Apply sends a state-machine command to the leader at addr (POST
// /v1/internal/apply) and returns its answer; a refusal is in Result.Err.
func (c *Client) Apply(ctx context.Context, addr string, cmd fsm.Command) (fsm.Result, error) {
	var resp ApplyResponse
	if err := c.send(ctx, http.MethodPost, addr, PathApply, cmd, &resp, nil); err != nil {
		return fsm.Result{}, err
	}
	return resp.Result(), nil
}

// SetPaused pauses or resumes processing through the agent at addr.
func (c *Client) SetPaused(ctx context.Context, addr string, paused bool) (fsm.Result, error) {
	path := PathResume
	if paused {
		path = PathPause
	}
	var resp ApplyResponse
	if err := c.send(ctx, http.MethodPost, addr, path, nil, &resp, nil); err != nil {
		return fsm.Result{}, err
	}
	return resp.Result(), nil
}

// PeerInfo asks the node at addr who it is and whether it is in a group.
func (c *Client) PeerInfo(ctx context.Context, addr string) (PeerInfo, error) {
	var info PeerInfo
	err := c.send(ctx, http.MethodGet, addr, PathPeerInfo, nil, &info, nil)
	return info, err
}

// Cursor fetches the replicated cursor and the fence row as the node at
// addr sees them.
func (c *Client) Cursor(ctx context.Context, addr string) (CursorState, error) {
	var st CursorState
	err := c.send(ctx, http.MethodGet, addr, PathCursor, nil, &st, nil)
	return st, err
}

// SetCursor asks the processing agent at addr to move the cursor.
func (c *Client) SetCursor(ctx context.Context, addr string, req CursorSetRequest) (CursorSetResponse, error) {
	var resp CursorSetResponse
	err := c.send(ctx, http.MethodPost, addr, PathCursorSet, req, &resp, nil)
	return resp, err
}

// Snapshot fetches the replicated state from the leader at addr.
func (c *Client) Snapshot(ctx context.Context, addr string) (Snapshot, error) {
	var snap Snapshot
	err := c.send(ctx, http.MethodGet, addr, PathSnapshot, nil, &snap, nil)
	return snap, err
}

// Restore asks the processing agent at addr to restore snap.
func (c *Client) Restore(ctx context.Context, addr string, snap Snapshot) (RestoreResponse, error) {
	var resp RestoreResponse
	err := c.send(ctx, http.MethodPost, addr, PathRestore, snap, &resp, nil)
	return resp, err
}

// Remove asks the leader at addr to drop a member (ErrNotLeader from any
// other member).
func (c *Client) Remove(ctx context.Context, addr string, req RemoveRequest) (RemoveResponse, error) {
	var resp RemoveResponse
	err := c.send(ctx, http.MethodPost, addr, PathRemove, req, &resp, nil)
	return resp, err
}

// Lease sends a lease command (op is acquire, renew or release) through
// the agent at addr.
func (c *Client) Lease(ctx context.Context, addr, op string, req LeaseRequest) (fsm.Result, error) {
	var resp ApplyResponse
	if err := c.send(ctx, http.MethodPost, addr, PathLease+op, req, &resp, nil); err != nil {
		return fsm.Result{}, err
	}
	return resp.Result(), nil
}

// Raw sends body as it is (nil for none) and returns the answer's status
// and body whatever they are: for tests that send what no well-behaved
// caller would. Only a request that never reached the server is retried.
func (c *Client) Raw(ctx context.Context, method, addr, path string, body []byte) (int, []byte, error) {
	var (
		status int
		raw    []byte
	)
	err := c.roundTrip(ctx, method, addr, path, body, func(resp *http.Response, data []byte) error {
		status, raw = resp.StatusCode, data
		return nil
	})
	return status, raw, err
}

// send encodes in (nil for no body), sends the request and decodes a 200
// answer (or one of the statuses in also) into out; any other answer
// becomes the error its error object carries.
func (c *Client) send(ctx context.Context, method, addr, path string, in, out any, also []int) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return fmt.Errorf("%s %s: encode request: %w", method, path, err)
		}
	}
	return c.roundTrip(ctx, method, addr, path, body, func(resp *http.Response, data []byte) error {
		if resp.StatusCode != http.StatusOK {
			// An error object is the answer's error whatever the status:
			// a 503 of a node that is shutting down is no readiness answer.
			var e struct {
				Error *Error `json:"error"`
			}
			if json.Unmarshal(data, &e) == nil && e.Error != nil {
				return e.Error.errWith(resp.StatusCode)
			}
			if !slices.Contains(also, resp.StatusCode) {
				return statusError(resp.StatusCode, bytes.TrimSpace(data))
			}
		}
		if err := json.Unmarshal(data, out); err != nil {
			if method == http.MethodPost {
				return fmt.Errorf("%w: decode the answer: %v", ErrUnknownOutcome, err)
			}
			return fmt.Errorf("decode the answer: %w", err)
		}
		return nil
	})
}

// roundTrip sends one request, again while it never reached the server,
// and hands a complete answer to answer. Every error names the request.
func (c *Client) roundTrip(ctx context.Context, method, addr, path string, body []byte, answer func(*http.Response, []byte) error) error {
	u := c.url(addr) + path
	backoff := c.backoff
	for attempt := 0; ; attempt++ {
		err := c.once(ctx, method, u, body, answer)
		if err == nil {
			return nil
		}
		err = fmt.Errorf("%s %s: %w", method, u, err)
		if !errors.Is(err, ErrNotSent) || attempt >= c.retries || ctx.Err() != nil {
			return err
		}
		if backoff.Wait(ctx) != nil {
			return err
		}
	}
}

func (c *Client) once(ctx context.Context, method, u string, body []byte, answer func(*http.Response, []byte) error) error {
	var (
		written atomic.Bool
		refused atomic.Pointer[error]
	)
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { written.Store(true) }}
	if check, ok := ctx.Value(serverCheckKey{}).(func(*tls.ConnectionState) error); ok && check != nil {
		// GotConn runs before the request is written: a connection to the
		// wrong server is closed there, so the write fails and nothing,
		// not even the token in the headers, reaches it.
		trace.GotConn = func(info httptrace.GotConnInfo) {
			var err error
			if tc, isTLS := info.Conn.(*tls.Conn); isTLS {
				cs := tc.ConnectionState()
				err = check(&cs)
			} else {
				err = errors.New("the connection is not TLS, so the server cannot prove who it is")
			}
			if err != nil {
				refused.Store(&err)
				info.Conn.Close()
				return
			}
			// The transport may try again on another connection; only
			// the one the request goes over counts.
			refused.Store(nil)
		}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, u, rd)
	if err != nil {
		return fmt.Errorf("build the request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	token := c.token
	if t, ok := ctx.Value(tokenKey{}).(string); ok {
		token = t
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	lost := func(what string, err error) error {
		if written.Load() {
			return fmt.Errorf("%w: %s: %v", ErrUnknownOutcome, what, err)
		}
		return fmt.Errorf("%w: %v", ErrNotSent, err)
	}
	resp, err := c.httpc.Do(req)
	if bad := refused.Load(); bad != nil {
		if err == nil {
			resp.Body.Close()
		}
		return fmt.Errorf("%w: the request was not sent: %v", ErrPermissionDenied, *bad)
	}
	if err != nil {
		return lost("no answer", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return lost("reading the answer", err)
	}
	return answer(resp, data)
}

// url is addr as a URL prefix: addr itself when it names a scheme, else
// addr with the client's scheme (https with TLS).
func (c *Client) url(addr string) string {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		return strings.TrimSuffix(addr, "/")
	}
	return c.scheme + addr
}
