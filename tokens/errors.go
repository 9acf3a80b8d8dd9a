package tokens

import (
	"errors"
	"fmt"
)

// Reason is the typed cause of a rejected handshake message. It is short,
// stable and safe to log, so the datapath puts it in flow records as is.
type Reason string

// The reasons a Consume* call can reject a message for.
const (
	// ReasonMalformed: the bytes do not parse as the expected message, a
	// certificate, or a claims set with every required claim.
	ReasonMalformed Reason = "malformed"
	// ReasonExpired: the token, the node certificate or its CA expired
	// (beyond the allowed clock skew).
	ReasonExpired Reason = "expired"
	// ReasonNotYetValid: the token (its iat or nbf) or a certificate starts
	// in the future (beyond the allowed clock skew).
	ReasonNotYetValid Reason = "not-yet-valid"
	// ReasonLifetimeTooLong: the token is valid for longer (exp minus the
	// earlier of iat and nbf) than the verifier's MaxPeerTokenLifetime.
	ReasonLifetimeTooLong Reason = "lifetime-too-long"
	// ReasonUnknownCA: no CA in the trust bundle signed the node certificate.
	ReasonUnknownCA Reason = "unknown-ca"
	// ReasonWrongTrustDomain: the CA that signed the node certificate belongs
	// to a different trust domain than the certificate or the token claims.
	ReasonWrongTrustDomain Reason = "wrong-trust-domain"
	// ReasonWrongCertUsage: a node certificate lacks key usage
	// digitalSignature or keyAgreement, or is a CA; or a certificate offered
	// as a CA is not one (basic constraints CA:TRUE and key usage certSign).
	ReasonWrongCertUsage Reason = "wrong-cert-usage"
	// ReasonBadSignature: the token's signature does not verify under the
	// node certificate's key, or the token names another node than the
	// certificate.
	ReasonBadSignature Reason = "bad-signature"
	// ReasonReplayed: the client nonce was already seen within its token's
	// lifetime.
	ReasonReplayed Reason = "replayed-nonce"
	// ReasonBadProof: a handshake proof does not verify, or a SYN-ACK does
	// not echo the client's nonce. On the client this includes a server
	// proof bound to another connection than the one the client dialed
	// (the client cannot tell that from a forged proof).
	ReasonBadProof Reason = "bad-proof"
	// ReasonEndpointMismatch: the connection a SYN claims (the client's
	// source and the destination it dialed) is not the one the server
	// observes: the SYN was relayed, or its source was translated by a NAT
	// not declared for the client's trust domain.
	ReasonEndpointMismatch Reason = "endpoint-mismatch"
	// ReasonUnsupportedVersion: the message is of another protocol version
	// (version 1 binds no endpoints and is never accepted).
	ReasonUnsupportedVersion Reason = "unsupported-version"
)

// RejectError is the error every Consume* method returns: a Reason for flow
// records and the detailed cause for logs.
type RejectError struct {
	// Reason is the typed cause, for flow records and metrics.
	Reason Reason
	// Err is the detail, for logs; it never holds key material or a whole token.
	Err error
}

// Error returns "reason: detail".
func (e *RejectError) Error() string {
	if e.Err == nil {
		return string(e.Reason)
	}
	return string(e.Reason) + ": " + e.Err.Error()
}

// Unwrap returns the detailed cause.
func (e *RejectError) Unwrap() error { return e.Err }

// ReasonOf returns the Reason of err if err is or wraps a *RejectError, and
// "" otherwise.
func ReasonOf(err error) Reason {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Reason
	}
	return ""
}

// reject builds a *RejectError with a formatted detail.
func reject(r Reason, format string, args ...any) *RejectError {
	return &RejectError{Reason: r, Err: fmt.Errorf(format, args...)}
}
