package cluster

import "testing"

func TestJoinConsentIsTheOperatorOrTheJoinToken(t *testing.T) {
	const op, rd, join = "operator-token-0123456789", "read-token-0123456789ab", "join-token-0123456789abc"
	acl := NewACL(op, rd)
	acl.SetJoinToken(join)
	n := &Node{cfg: Config{ACL: acl}}
	for _, tt := range []struct {
		token string
		want  bool
	}{{op, true}, {join, true}, {rd, false}, {"", false}, {"a-token-of-its-own-0123456789", false}} {
		c := caller{token: tt.token, right: acl.rightOf(tt.token)}
		if got := n.consents(c); got != tt.want {
			t.Errorf("consents(token %q) = %v, want %v", tt.token, got, tt.want)
		}
	}
	acl.SetJoinToken("")
	if n.consents(caller{token: ""}) {
		t.Error("an empty join token consents to a join without a token")
	}
	if !(&Node{}).consents(caller{}) {
		t.Error("without an acl block every join must be consented, as before")
	}
}
