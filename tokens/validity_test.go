package tokens

import (
	"crypto/x509"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// claimsAt returns test claims of node-a issued at iat and expiring at exp;
// nbf, if not zero, is set as the token's not-before.
func claimsAt(iat, nbf, exp time.Time) *Claims {
	c := testClaims("cluster.local", "node-a", iat)
	c.ExpiresAt = jwt.NewNumericDate(exp)
	if !nbf.IsZero() {
		c.NotBefore = jwt.NewNumericDate(nbf)
	}
	return c
}

// checkToken offers claims signed by f.a to se as a SYN and as a JWT, and
// fails unless both give want ("" for accepted).
func checkToken(t *testing.T, f *fixture, se *Engine, c *Claims, want Reason) {
	t.Helper()
	_, synErr := se.ConsumeSYN(craftSYN(t, f.a.Cert.Raw, c, f.a.Key), testConn)
	jwtString, _, _, err := signClaims(c, f.a.Key)
	if err != nil {
		t.Fatal(err)
	}
	_, _, jwtErr := se.VerifyJWT(jwtString, f.a.Cert)
	for path, err := range map[string]error{"SYN": synErr, "JWT": jwtErr} {
		if want == "" {
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			continue
		}
		wantReason(t, err, want)
	}
}

// A token's nbf (not-before) delays its validity like a later iat, with
// the same clock skew allowance.
func TestTokenNotBefore(t *testing.T) {
	f := newFixture(t, "cluster.local")
	const skew = 10 * time.Second
	clk := newClock()
	clk.t = clk.t.Truncate(time.Second) // tokens carry whole seconds
	se, err := NewEngine(Config{Credentials: f.b, Trust: f.bundle, Now: clk.Now, ClockSkew: skew})
	if err != nil {
		t.Fatal(err)
	}
	now := clk.Now()
	tests := []struct {
		name string
		nbf  time.Duration // from now
		want Reason
	}{
		{"nbf passed", -time.Minute, ""},
		{"nbf ahead within the skew", skew - time.Second, ""},
		{"nbf ahead beyond the skew", skew + time.Second, ReasonNotYetValid},
		{"nbf a minute ahead", time.Minute, ReasonNotYetValid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkToken(t, f, se, claimsAt(now, now.Add(tt.nbf), now.Add(5*time.Minute)), tt.want)
		})
	}
	t.Run("accepted once nbf has come", func(t *testing.T) {
		syn := craftSYN(t, f.a.Cert.Raw, claimsAt(now, now.Add(time.Minute), now.Add(5*time.Minute)), f.a.Key)
		_, err := se.ConsumeSYN(syn, testConn)
		wantReason(t, err, ReasonNotYetValid)
		clk.Advance(time.Minute)
		if _, err := se.ConsumeSYN(withNewNonce(syn), testConn); err != nil {
			t.Fatal(err)
		}
	})
}

// Certificates' NotBefore, the node's and its CA's, with the clock skew.
func TestCertificateNotBefore(t *testing.T) {
	f := newFixture(t, "cluster.local")
	se := newTestEngine(t, f.b, f.bundle, nil) // default skew, 30s
	startingIn := func(d time.Duration) func(*x509.Certificate) {
		return func(c *x509.Certificate) { c.NotBefore = time.Now().Add(d) }
	}
	for _, tt := range []struct {
		name string
		from time.Duration
		want Reason
	}{
		{"node certificate starts within the skew", 10 * time.Second, ""},
		{"node certificate starts in an hour", time.Hour, ReasonNotYetValid},
	} {
		t.Run(tt.name, func(t *testing.T) {
			n := issueNodeWith(t, f.ca, "spiffe://cluster.local/node/early", startingIn(tt.from))
			_, err := se.ConsumeSYN(craftSYN(t, n.Cert.Raw, testClaims("cluster.local", "early", time.Now()), n.Key), testConn)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantReason(t, err, tt.want)
		})
	}
	t.Run("CA starts in an hour", func(t *testing.T) {
		early := selfSignedCA(t, "cluster.local", startingIn(time.Hour))
		bundle, err := NewTrustBundle(early.Cert)
		if err != nil {
			t.Fatal(err)
		}
		n := issueRaw(t, early, "spiffe://cluster.local/node/n")
		_, err = newTestEngine(t, f.b, bundle, nil).ConsumeSYN(craftSYN(t, n.Cert.Raw, testClaims("cluster.local", "n", time.Now()), n.Key), testConn)
		wantReason(t, err, ReasonNotYetValid)
	})
}

// A peer token valid for longer than Config.MaxPeerTokenLifetime (by
// default twice the token lifetime) is refused, whichever of iat and nbf
// starts it; this bounds the use of a token a node signed wrongly or that
// leaked, even while it has not expired.
func TestPeerTokenLifetimeCap(t *testing.T) {
	f := newFixture(t, "cluster.local")
	now := time.Now().Truncate(time.Second)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	var noNBF time.Time
	engine := func(t *testing.T, cfg Config) *Engine {
		cfg.Credentials, cfg.Trust = f.b, f.bundle
		cfg.Now = func() time.Time { return now }
		e, err := NewEngine(cfg)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	tests := []struct {
		name          string
		cfg           Config
		iat, nbf, exp time.Time
		want          Reason
	}{
		{"default: the default lifetime", Config{}, at(0), noNBF, at(5 * time.Minute), ""},
		{"default: exactly 10 minutes", Config{}, at(-time.Minute), noNBF, at(9 * time.Minute), ""},
		{"default: a second over 10 minutes", Config{}, at(-time.Minute), noNBF, at(9*time.Minute + time.Second), ReasonLifetimeTooLong},
		{"default: an hour", Config{}, at(0), noNBF, at(time.Hour), ReasonLifetimeTooLong},
		{"default: a day, issued long ago", Config{}, at(-23 * time.Hour), noNBF, at(time.Hour), ReasonLifetimeTooLong},
		{"default: nbf before iat widens it", Config{}, at(0), at(-8 * time.Minute), at(5 * time.Minute), ReasonLifetimeTooLong},
		{"default: nbf after iat, exp-iat too long", Config{}, at(-8 * time.Minute), at(-time.Minute), at(4 * time.Minute), ReasonLifetimeTooLong},
		{"default: nbf after iat, within", Config{}, at(-2 * time.Minute), at(-time.Minute), at(4 * time.Minute), ""},
		{"explicit cap: within", Config{TokenLifetime: time.Minute, MaxPeerTokenLifetime: 2 * time.Minute}, at(0), noNBF, at(2 * time.Minute), ""},
		{"explicit cap: over", Config{TokenLifetime: time.Minute, MaxPeerTokenLifetime: 2 * time.Minute}, at(0), noNBF, at(3 * time.Minute), ReasonLifetimeTooLong},
		{"cap follows the token lifetime: within", Config{TokenLifetime: 30 * time.Minute}, at(0), noNBF, at(time.Hour), ""},
		{"cap follows the token lifetime: over", Config{TokenLifetime: 30 * time.Minute}, at(0), noNBF, at(time.Hour + time.Second), ReasonLifetimeTooLong},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkToken(t, f, engine(t, tt.cfg), claimsAt(tt.iat, tt.nbf, tt.exp), tt.want)
		})
	}
}
