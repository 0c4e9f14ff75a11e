// Package pgdb is the PostgreSQL plumbing the source, the tracking database
// and delivery share: connecting, and errors that name the database and say
// what to fix. It knows no schema and runs no query of its own but a ping.
package pgdb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// defaultConnectTimeout bounds a connection attempt when the DSN does not set
// connect_timeout, so that an unreachable database is reported at start-up
// instead of hanging until the caller gives up.
const defaultConnectTimeout = 10 * time.Second

// Open parses dsn, connects and pings. role ("source" or "tracking") and
// the returned name (host:port/dbname) make up the prefix of every error, so
// an operator with two DSNs knows which one is wrong. params are server
// settings for every connection, each unless the DSN sets it itself.
func Open(ctx context.Context, role, dsn string, params map[string]string) (*pgxpool.Pool, string, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// The parse error quotes the DSN, password and all, so only its
		// cause is kept.
		msg := "cannot parse the DSN"
		if cause := parseCause(err); cause != "" {
			msg += ": " + cause
		}
		return nil, "", &dbError{role: role, msg: msg, err: err}
	}
	cc := cfg.ConnConfig
	name := cc.Host + ":" + strconv.Itoa(int(cc.Port)) + "/" + cc.Database
	if cc.ConnectTimeout == 0 {
		cc.ConnectTimeout = defaultConnectTimeout
	}
	for k, v := range params {
		if _, set := cc.RuntimeParams[k]; !set {
			cc.RuntimeParams[k] = v
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, "", Errorf(role, name, err, "%s", Describe(err))
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, "", Errorf(role, name, err, "%s", Describe(err))
	}
	return pool, name, nil
}

// dbError is an error about one of the two databases. Error is one line,
// "<role> database <host:port/db>: <what is wrong>"; Unwrap gives the driver's
// error for errors.Is and errors.As.
type dbError struct {
	role, name, msg string
	err             error
}

// Errorf returns an error about the role database name (a sentence made of
// format and args) that wraps err, the driver's error.
func Errorf(role, name string, err error, format string, args ...any) error {
	return &dbError{role: role, name: name, msg: fmt.Sprintf(format, args...), err: err}
}

func (e *dbError) Error() string {
	if e.name == "" {
		return e.role + " database: " + e.msg
	}
	return e.role + " database " + e.name + ": " + e.msg
}

func (e *dbError) Unwrap() error { return e.err }

// Describe reduces a driver error to the one line an operator needs: the
// server's own message, or the network error, without the driver's
// multi-line preamble (which also repeats user and database).
func Describe(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Message
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return opErr.Error()
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return dnsErr.Error()
	}
	if errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return "timed out connecting (check the host, the port and any firewall)"
	}
	if errors.Is(err, context.Canceled) {
		return "canceled"
	}
	return oneLine(err.Error())
}

// parseCause is the part of a DSN parse error that cannot contain the
// password: the parser's complaint and the cause under it, without the DSN it
// quotes (its redaction is best effort) or a URL error's copy of the URL.
func parseCause(err error) string {
	var pcErr *pgconn.ParseConfigError
	if !errors.As(err, &pcErr) {
		return ""
	}
	msg := pcErr.Error()
	i := strings.LastIndex(msg, "`: ")
	if i < 0 {
		return ""
	}
	msg = msg[i+len("`: "):]
	inner := pcErr.Unwrap()
	if inner == nil {
		return oneLine(msg)
	}
	// msg is "<complaint> (<inner error>)".
	msg = strings.TrimSuffix(msg, " ("+inner.Error()+")")
	var urlErr *url.Error
	if errors.As(inner, &urlErr) {
		inner = urlErr.Err
	}
	return oneLine(msg + ": " + inner.Error())
}

func oneLine(s string) string {
	lines := strings.Fields(strings.ReplaceAll(s, "\n", " ; "))
	return strings.ReplaceAll(strings.Join(lines, " "), " ; ", "; ")
}

// IsPermanent reports whether a database error is one that retrying cannot
// fix: bad credentials, a database, table or column that does not exist, a
// missing grant, or a DSN that does not parse. Network failures, timeouts
// and a server that is starting or shutting down are not permanent.
func IsPermanent(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "28": // invalid authorization
			return true
		}
		switch pgErr.Code {
		case "3D000", "42P01", "42703", "42501":
			return true
		}
		return false
	}
	var pcErr *pgconn.ParseConfigError
	return errors.As(err, &pcErr)
}

// Rollback ends the transaction on conn after a failure, best effort: if
// it fails, the connection is still inside the transaction and the pool
// destroys it on release.
func Rollback(ctx context.Context, conn *pgx.Conn) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	conn.Exec(rctx, `ROLLBACK`) //nolint:errcheck // see above
}
