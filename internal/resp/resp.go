// Package resp is a minimal Redis client speaking RESP2, for the throwaway
// servers of internal/redisserver and internal/sidekiqserver and their
// tests: readiness checks (PING, SMEMBERS) and a few plain commands (SET,
// GET, LPUSH, SADD). It keeps the harnesses free of a client library; code
// that talks to Redis for real should use one.
package resp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// dialTimeout bounds connecting when ctx has no deadline.
const dialTimeout = 5 * time.Second

// Error is an error reply from the server, such as "LOADING Redis is
// loading the dataset in memory" or "WRONGTYPE ...". The connection stays
// usable after one.
type Error string

func (e Error) Error() string { return "redis: " + string(e) }

// Conn is one connection to a Redis server. Its methods are safe for
// concurrent use; commands run one at a time.
type Conn struct {
	mu     sync.Mutex
	nc     net.Conn
	r      *bufio.Reader
	broken error // set after an I/O or protocol error: the stream is out of step
}

// Dial connects to a server given as redis://[user:password@]host:port/db
// (host defaults to 127.0.0.1, port to 6379, db to 0), authenticating and
// selecting the database as the URL says.
func Dial(ctx context.Context, rawURL string) (*Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("parse redis URL %q: %w", rawURL, err)
	}
	if u.Scheme != "redis" {
		return nil, fmt.Errorf("redis URL %q: scheme %q is not supported (only redis://)", rawURL, u.Scheme)
	}
	host, port := u.Hostname(), u.Port()
	if host == "" {
		host = "127.0.0.1"
	}
	if port == "" {
		port = "6379"
	}
	db := 0
	if p := strings.Trim(u.Path, "/"); p != "" {
		db, err = strconv.Atoi(p)
		if err != nil || db < 0 {
			return nil, fmt.Errorf("redis URL %q: database %q is not a number", rawURL, p)
		}
	}
	addr := net.JoinHostPort(host, port)
	d := net.Dialer{Timeout: dialTimeout}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to redis at %s: %w", addr, err)
	}
	c := &Conn{nc: nc, r: bufio.NewReader(nc)}
	if pw, ok := u.User.Password(); ok {
		args := []string{"AUTH", pw}
		if name := u.User.Username(); name != "" {
			args = []string{"AUTH", name, pw}
		}
		if _, err := c.Do(ctx, args...); err != nil {
			c.Close()
			return nil, fmt.Errorf("authenticate to redis at %s: %w", addr, err)
		}
	}
	if db != 0 {
		if _, err := c.Do(ctx, "SELECT", strconv.Itoa(db)); err != nil {
			c.Close()
			return nil, fmt.Errorf("select database %d on redis at %s: %w", db, addr, err)
		}
	}
	return c, nil
}

// Do sends one command and returns its reply: a string for a simple or
// bulk string, nil for a null bulk string or array, an int64 for an
// integer, and []any for an array. An error reply is returned as an Error.
func (c *Conn) Do(ctx context.Context, args ...string) (any, error) {
	if len(args) == 0 {
		return nil, errors.New("redis: empty command")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		return nil, fmt.Errorf("redis %s: connection unusable after an earlier error: %w", args[0], c.broken)
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Time{}
	}
	if err := c.nc.SetDeadline(deadline); err != nil {
		return nil, fmt.Errorf("redis %s: set deadline: %w", args[0], err)
	}
	// Unblock the read or write at once if ctx is cancelled.
	stop := context.AfterFunc(ctx, func() { _ = c.nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c.nc, b.String()); err != nil {
		c.broken = err
		return nil, fmt.Errorf("redis %s: send: %w", args[0], ctxErr(ctx, err))
	}
	v, err := readReply(c.r)
	var rerr Error
	if errors.As(err, &rerr) {
		return nil, rerr
	}
	if err != nil {
		c.broken = err
		return nil, fmt.Errorf("redis %s: read reply: %w", args[0], ctxErr(ctx, err))
	}
	return v, nil
}

// Close closes the connection.
func (c *Conn) Close() error {
	return c.nc.Close()
}

// ctxErr prefers the context's error to the timeout it caused.
func ctxErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errors.Join(ctx.Err(), err)
	}
	return err
}

// readReply reads one RESP2 value. An error reply nested in an array is
// returned as the array's element.
func readReply(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return nil, fmt.Errorf("malformed reply line %q", line)
	}
	kind, body := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return body, nil
	case '-':
		return nil, Error(body)
	case ':':
		n, err := strconv.ParseInt(body, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("malformed integer reply %q", body)
		}
		return n, nil
	case '$':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("malformed bulk length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(body)
		if err != nil || n < -1 {
			return nil, fmt.Errorf("malformed array length %q", body)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			v, err := readReply(r)
			var rerr Error
			switch {
			case errors.As(err, &rerr):
				out[i] = rerr
			case err != nil:
				return nil, err
			default:
				out[i] = v
			}
		}
		return out, nil
	default:
		return nil, fmt.Errorf("unknown reply type %q", kind)
	}
}

// Strings converts an array reply of strings, as SMEMBERS or LRANGE give,
// to a []string.
func Strings(v any, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, nil
	}
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("redis: want an array reply, got %T", v)
	}
	out := make([]string, 0, len(arr))
	for i, e := range arr {
		s, ok := e.(string)
		if !ok {
			return nil, fmt.Errorf("redis: element %d of the reply is %T, not a string", i, e)
		}
		out = append(out, s)
	}
	return out, nil
}
