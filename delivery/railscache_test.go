package delivery

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// The expected digests below were produced by Rails itself, not by this
// package: ActiveSupport 7.2.3 (the version in GitLab's Gemfile.lock), loaded
// from the rails/rails tag v7.2.3 (activesupport/lib) on Ruby 3.1 with
// Debian's dependencies, with ActiveSupport::Digest.hash_digest_class set to
// OpenSSL::Digest::SHA256 as GitLab's load_defaults 7.1 does, and
//
//	s = ActiveSupport::Cache::RedisCacheStore.new(namespace: ns, redis: Object.new)
//	out = s.send(:normalize_key, key, s.options)
//
// printing out's last 38 bytes and OpenSSL::Digest::SHA256.hexdigest(out).
// (Debian's own ruby-activesupport is 6.1.7.10, whose truncate_key differs:
// it appends ":sha2:" and the full 64-digit SHA-256, so it was not used.)
func TestRailsCacheKey(t *testing.T) {
	const ns = "cache:gitlab" // 13 bytes with the ":" Rails adds
	twoK := strings.Repeat("0123456789abcdef", 128)
	straddle := strings.Repeat("a", 972) + strings.Repeat("€", 30)

	tests := []struct {
		name      string
		namespace string
		key       string
		want      string // built from Rails' printed suffix
		wantSHA   string // SHA-256 of Rails' whole output
	}{
		{
			name:      "short key",
			namespace: ns,
			key:       "flipper/v1/feature/geo_feature",
			want:      "cache:gitlab:flipper/v1/feature/geo_feature",
			wantSHA:   "b812b54959946b63a9d84aa82c5f4265988c9f39da1f5beba23ead7717791489",
		},
		{
			name:      "namespaced key exactly 1024 bytes is kept",
			namespace: ns,
			key:       strings.Repeat("a", 1024-13),
			want:      "cache:gitlab:" + strings.Repeat("a", 1024-13),
			wantSHA:   "0caf48e5568ee5873c722d695d7467d261d3eadea57d405cdf8e53ca706d8431",
		},
		{
			name:      "one byte over is truncated",
			namespace: ns,
			key:       strings.Repeat("a", 1024-13+1),
			want:      "cache:gitlab:" + strings.Repeat("a", 986-13) + ":hash:93aa6bf14b0814da45a06c80dc8fb08b",
			wantSHA:   "f54c1f6abf0b21f5e567cbad99059d4456e19d790fc0035daebd3c0fb8670aa2",
		},
		{
			name:      "2 KB key",
			namespace: ns,
			key:       twoK,
			want:      "cache:gitlab:" + twoK[:986-13] + ":hash:c4407f2b7416d69479e7173bda169859",
			wantSHA:   "9c0b2ca90c4734675bd57b6ac940353399121283103992a20fc648c825ec61d9",
		},
		{
			// byte 986 of the namespaced key is the second byte of a "€"
			// (E2 82 AC): Rails cuts bytes, leaving a lone 0xE2.
			name:      "multi-byte UTF-8 straddling the cut",
			namespace: ns,
			key:       straddle,
			want:      "cache:gitlab:" + strings.Repeat("a", 972) + "\xe2" + ":hash:0a1d10a5d090318be972114f85ff8304",
			wantSHA:   "a3e5677fdec4d2ffb530ad282da3fd2b6077f909b0efbe137bbb90456d6d47fc",
		},
		{
			name:      "empty namespace, short key (Rails namespace: nil)",
			namespace: "",
			key:       "flipper/v1/feature/geo_feature",
			want:      "flipper/v1/feature/geo_feature",
			wantSHA:   "426a7f9265bee5d685c8f0723e27314f205cd48c7f6804ad4a5d6eb35f7a7942",
		},
		{
			name:      "empty namespace, key exactly 1024 bytes",
			namespace: "",
			key:       strings.Repeat("b", 1024),
			want:      strings.Repeat("b", 1024),
			wantSHA:   "0c66f2c45405de575189209a768399bcaf88ccc51002407e395c0136aad2844d",
		},
		{
			name:      "empty namespace, one byte over",
			namespace: "",
			key:       strings.Repeat("b", 1025),
			want:      strings.Repeat("b", 986) + ":hash:c2bcb9162cf48ebc8413bbb93b31cd79",
			wantSHA:   "bb52398100d3af4e6da51a3832eb8c8433c155beb34a958dc56a5c0c5ebc939b",
		},
		{
			name:      "empty namespace, 2 KB key",
			namespace: "",
			key:       twoK,
			want:      twoK[:986] + ":hash:eb076a2ec6ced9ee2e823e098446513c",
			wantSHA:   "399bc5bbefd0ef4c983cce938f6ee72cd1e9f7f6877bb0e2cffc0723d65b1a5a",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := RailsCacheKey(tc.namespace, tc.key)
			if got != tc.want {
				t.Errorf("RailsCacheKey(%q, <%d bytes>) = ...%q (%d bytes), want ...%q (%d bytes)",
					tc.namespace, len(tc.key), tail(got), len(got), tail(tc.want), len(tc.want))
			}
			sum := sha256.Sum256([]byte(got))
			if h := hex.EncodeToString(sum[:]); h != tc.wantSHA {
				t.Errorf("sha256(RailsCacheKey(%q, <%d bytes>)) = %s, want %s (Rails)",
					tc.namespace, len(tc.key), h, tc.wantSHA)
			}
			if len(got) > railsMaxKeyBytesize {
				t.Errorf("key is %d bytes, over Rails' %d", len(got), railsMaxKeyBytesize)
			}
		})
	}
}

func tail(s string) string {
	if len(s) > 50 {
		return s[len(s)-50:]
	}
	return s
}
