package tideflow

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// DialOptions say how to reach a frontend: plaintext by default; TLS when TLSCA or TLSCert is
// set (the system's roots when TLSCA is empty), with a client certificate for mutual TLS; and
// an API key sent on every call as `authorization: Bearer <key>`.
type DialOptions struct {
	APIKey  string
	TLSCA   string // PEM file of the CA to trust
	TLSCert string // PEM file of the client certificate (mutual TLS)
	TLSKey  string // PEM file of its private key
}

// Dial opens a client connection to a frontend at address as opts say.
func Dial(address string, opts DialOptions, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
	transport, err := opts.transport()
	if err != nil {
		return nil, err
	}
	dial := append([]grpc.DialOption{grpc.WithTransportCredentials(transport),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageBytes))}, extra...)
	if opts.APIKey != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{key: opts.APIKey, secure: opts.secure()}))
	}
	return grpc.NewClient(address, dial...)
}

// maxMessageBytes is the largest answer a worker takes (a task with its input).
const maxMessageBytes = 16 << 20

func (o DialOptions) secure() bool { return o.TLSCA != "" || o.TLSCert != "" }

func (o DialOptions) transport() (credentials.TransportCredentials, error) {
	if !o.secure() {
		return insecure.NewCredentials(), nil
	}
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.TLSCA != "" {
		pem, err := os.ReadFile(o.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("TLS CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA %s: no PEM certificate in it", o.TLSCA)
		}
		config.RootCAs = pool
	}
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return nil, errors.New("the TLS client certificate and its key go together")
	}
	if o.TLSCert != "" {
		pair, err := tls.LoadX509KeyPair(o.TLSCert, o.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("TLS client certificate: %w", err)
		}
		config.Certificates = []tls.Certificate{pair}
	}
	return credentials.NewTLS(config), nil
}

// bearer sends an API key with every call. Over plaintext too (start-dev, loopback): the
// frontend decides what it accepts.
type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }
