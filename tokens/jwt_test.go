package tokens

import (
	"crypto/ecdsa"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// The JWT form is a standard ES256 JWT: any JWT library verifies it with the
// node certificate's key, and VerifyJWT applies the SYN's checks to it.
func TestJWTForm(t *testing.T) {
	f := newFixture(t, "cluster.local")
	e := newTestEngine(t, f.a, f.bundle, nil)
	id := workload("ns", "pod", 2)
	tok, err := e.SignJWT(id)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, jwtHeaderB64+".") {
		t.Fatalf("JWT header %q", strings.Split(tok, ".")[0])
	}
	var c Claims
	parsed, err := jwt.ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) {
		return f.a.Cert.PublicKey.(*ecdsa.PublicKey), nil
	}, jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer("node-a"), jwt.WithExpirationRequired())
	if err != nil || !parsed.Valid {
		t.Fatalf("golang-jwt rejects the token: %v", err)
	}
	if c.Pod != "pod" || c.Cluster != "cluster.local" || c.Labels["example.com/label-01"] != "value-01" {
		t.Fatalf("claims %+v", c)
	}

	verifier := newTestEngine(t, f.b, f.bundle, nil)
	got, node, err := verifier.VerifyJWT(tok, f.a.Cert)
	if err != nil || node != "node-a" || got.Pod != "pod" {
		t.Fatalf("VerifyJWT = %v, %q, %v", got, node, err)
	}
	// The SYN carries exactly this payload and signature.
	syn, _, _ := e.NewSYN(id, testConn)
	parts := strings.Split(tok, ".")
	payload, _ := decodeSegment(parts[1])
	sig, _ := decodeSegment(parts[2])
	if !strings.Contains(string(syn), string(payload)) || !strings.HasSuffix(string(syn), string(sig)) {
		t.Fatal("the SYN does not carry the JWT's payload and signature")
	}
	if compactToJWT(payload, sig) != tok {
		t.Fatal("rebuilding the JWT from the compact form differs")
	}

	tests := []struct {
		name string
		tok  string
		want Reason
	}{
		{"two parts", parts[0] + "." + parts[1], ReasonMalformed},
		{"other header", "eyJhbGciOiJub25lIn0." + parts[1] + "." + parts[2], ReasonMalformed},
		{"bad base64", parts[0] + ".!!!." + parts[2], ReasonMalformed},
		{"payload not JSON", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte("nope")) + "." + parts[2], ReasonMalformed},
		{"signature of another token", parts[0] + "." + parts[1] + "." + strings.Split(otherJWT(t, e), ".")[2], ReasonBadSignature},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := verifier.VerifyJWT(tt.tok, f.a.Cert)
			wantReason(t, err, tt.want)
		})
	}
	_, _, err = verifier.VerifyJWT(tok, f.b.Cert)
	wantReason(t, err, ReasonBadSignature)
}

func otherJWT(t *testing.T, e *Engine) string {
	t.Helper()
	tok, err := e.SignJWT(workload("ns", "other", 1))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// compactToJWT rebuilds the JWT from the payload and signature a SYN
// carries (the header is fixed, so it is not carried).
func compactToJWT(payload, sig []byte) string {
	return jwtHeaderB64 + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + base64.RawURLEncoding.EncodeToString(sig)
}
