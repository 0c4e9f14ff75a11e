package cluster

import (
	"context"
	"crypto/subtle"
	"fmt"
	"net/http"
	"sync/atomic"

	"github.com/geocursor/geocursor/api"
	"github.com/geocursor/geocursor/fsm"
	"github.com/geocursor/geocursor/tlsutil"
)

// ACL holds the API's two tokens (design section 10). It is safe for
// concurrent use, and Set replaces the tokens while the node runs (SIGHUP).
// Tokens are compared in constant time and never logged.
type ACL struct {
	cur atomic.Pointer[tokens]
	// join is the join token (SetJoinToken, join.go).
	join atomic.Pointer[[]byte]
}

type tokens struct{ operator, read []byte }

// NewACL returns an ACL with the given tokens; read may be empty (then
// only the operator token reads).
func NewACL(operator, read string) *ACL {
	a := &ACL{}
	a.Set(operator, read)
	return a
}

// Set replaces the tokens.
func (a *ACL) Set(operator, read string) {
	a.cur.Store(&tokens{operator: []byte(operator), read: []byte(read)})
}

// operatorToken is the operator token as set now, for the node's own
// requests that need the operator's consent (see Node.withOwnToken).
func (a *ACL) operatorToken() string {
	return string(a.cur.Load().operator)
}

// rightOf is what token may do.
func (a *ACL) rightOf(token string) right {
	t := a.cur.Load()
	tok := []byte(token)
	// Both comparisons always run, so the time taken says nothing about
	// which token, if any, was close.
	op := subtle.ConstantTimeCompare(tok, t.operator) == 1 && len(t.operator) > 0
	rd := subtle.ConstantTimeCompare(tok, t.read) == 1 && len(t.read) > 0
	switch {
	case op:
		return rightOperator
	case rd:
		return rightRead
	}
	return rightNone
}

// right is what a caller may do with its token.
type right int

const (
	rightNone right = iota
	rightRead
	rightOperator
)

// access is what an endpoint asks of its caller.
type access int

const (
	// accessOpen: anyone (the health checks).
	accessOpen access = iota
	// accessRead: the read or the operator token, or a peer.
	accessRead
	// accessOperator: the operator token.
	accessOperator
	// accessPeer: a peer certificate (with TLS), else the operator token
	// (with an acl), else anyone.
	accessPeer
)

// caller is who sent a request, as far as the node can tell.
type caller struct {
	// peer is the node a verified peer certificate names; "" for none.
	peer string
	// client is the name a verified client certificate carries.
	client string
	// token is the token as given ("" for none), right what it may do.
	token string
	right right
}

// name is how an audit line names the caller: its certificate, or the
// right of its token; never the token.
func (c caller) name() string {
	switch {
	case c.peer != "":
		return "peer " + c.peer
	case c.client != "":
		return "client " + c.client
	case c.right == rightOperator:
		return "the operator token"
	case c.right == rightRead:
		return "the read token"
	}
	return "an anonymous caller"
}

type callerKey struct{}

func callerOf(ctx context.Context) caller {
	c, _ := ctx.Value(callerKey{}).(caller)
	return c
}

// identify reads who sent r: its TLS client certificate (verified by the
// TLS layer against the CA) and its token.
func (n *Node) identify(r *http.Request) caller {
	c := caller{token: api.BearerToken(r.Header)}
	c.peer, _ = tlsutil.PeerOf(r.TLS)
	c.client, _ = tlsutil.ClientNameOf(r.TLS)
	if n.cfg.ACL != nil && c.token != "" {
		c.right = n.cfg.ACL.rightOf(c.token)
	}
	return c
}

// authorize decides whether c may call an endpoint that asks for need.
// Without a token it is ErrUnauthorized (401), with one that lacks the
// right ErrPermissionDenied (403).
func (n *Node) authorize(c caller, need access) error {
	acl, tls := n.cfg.ACL != nil, n.cfg.TLS != nil
	switch need {
	case accessOpen:
		return nil
	case accessRead:
		if !acl || c.right >= rightRead || c.peer != "" {
			return nil
		}
	case accessOperator:
		if !acl || c.right == rightOperator {
			return nil
		}
	case accessPeer:
		switch {
		case tls && c.peer != "":
			return nil
		case tls:
			return fmt.Errorf("%w: this endpoint is for the cluster's peers: present a peer certificate", api.ErrPermissionDenied)
		case !acl || c.right == rightOperator:
			return nil
		}
	}
	if c.token == "" {
		return fmt.Errorf("%w: send a token (Authorization: Bearer TOKEN or %s: TOKEN)", api.ErrUnauthorized, api.TokenHeader)
	}
	return fmt.Errorf("%w: the token given may not do this", api.ErrPermissionDenied)
}

// authorizeCommand decides whether c may have the leader apply cmd
// through POST /v1/internal/apply, which only peers reach (design section
// 10: peers send only what peers send).
//
//   - acquire, renew, release and advance: a peer in its own name (the
//     node its certificate names), and acquire only if its members row
//     does not say it is a witness: a node that processes nothing must
//     not hold the lease, let alone advance the cursor over events it
//     never read. With the operator's token they may name any member: the
//     operator drives the lease by hand through POST /v1/lease/{op} on a
//     follower, which forwards the token (the system tests do so on
//     groups of witnesses).
//   - reserve, set_cursor, restore and set_paused: the operator's, with
//     the operator's token whoever sends them. A processing peer that
//     carries out `cursor set` or `snapshot restore` forwards the token
//     of the operator's request with every command it sends for it
//     (Node.applyAt), so a peer certificate alone never suffices.
//   - anything else (revoke, member changes): the leader's own, never
//     accepted from outside.
//
// Without TLS, peers prove themselves with the operator's token, so these
// rules separate nothing: a peer certificate is what they bind.
func (n *Node) authorizeCommand(c caller, cmd fsm.Command) error {
	operator := n.cfg.ACL == nil || c.right == rightOperator
	switch cmd.Op {
	case fsm.OpAcquire, fsm.OpRenew, fsm.OpRelease, fsm.OpAdvance:
		if n.cfg.TLS == nil || (n.cfg.ACL != nil && c.right == rightOperator) {
			return nil
		}
		if c.peer != cmd.Node {
			return fmt.Errorf("%w: peer %s may not send %s in the name of %s", api.ErrPermissionDenied, c.peer, cmd.Op, cmd.Node)
		}
		if m, _ := n.fsm.Member(cmd.Node); cmd.Op == fsm.OpAcquire && m.Witness {
			return fmt.Errorf("%w: %s advertises that it does not process (a witness, without a source block): only a processing node may take the lease",
				api.ErrPermissionDenied, cmd.Node)
		}
		return nil
	case fsm.OpReserve, fsm.OpSetCursor, fsm.OpRestore, fsm.OpSetPaused:
		if operator {
			return nil
		}
		return fmt.Errorf("%w: %s is an operator's command and needs the operator's token, which the peer that takes the operator's request forwards; the request from %s carried none",
			api.ErrPermissionDenied, cmd.Op, c.name())
	}
	return fmt.Errorf("%w: %s is the leader's own command and is never forwarded", api.ErrPermissionDenied, cmd.Op)
}
