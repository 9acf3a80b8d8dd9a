package dockersource

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
)

// Engine is what the source asks of the Docker engine; [Client] is the
// real one.
type Engine interface {
	// Running lists the running containers (without Pid).
	Running(ctx context.Context) ([]Container, error)
	// Inspect returns one container, with Pid when it runs.
	Inspect(ctx context.Context, id string) (Container, error)
	// Events streams the IDs of containers an event concerned, until ctx
	// ends or the stream breaks (an error on the second channel).
	Events(ctx context.Context) (<-chan string, <-chan error)
}

// Client is an [Engine] over the Docker Engine API, through the official
// client module. The API version is negotiated with the engine (Debian's
// docker.io 20.10 speaks 1.41).
type Client struct {
	c *client.Client
}

var _ Engine = (*Client)(nil)

// NewClient connects to the engine at host ("unix:///var/run/docker.sock",
// "tcp://...").
func NewClient(host string) (*Client, error) {
	c, err := client.New(client.WithHost(host), client.WithAPIVersionNegotiation(), client.WithUserAgent("bireme"))
	if err != nil {
		return nil, fmt.Errorf("docker client for %s: %w", host, err)
	}
	return &Client{c: c}, nil
}

// Close releases the client's connections.
func (c *Client) Close() error { return c.c.Close() }

// Running implements [Engine].
func (c *Client) Running(ctx context.Context) ([]Container, error) {
	res, err := c.c.ContainerList(ctx, client.ContainerListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list containers: %w", err)
	}
	out := make([]Container, 0, len(res.Items))
	for _, s := range res.Items {
		ct := Container{ID: s.ID, Labels: s.Labels, NetworkMode: s.HostConfig.NetworkMode}
		if len(s.Names) > 0 {
			ct.Name = strings.TrimPrefix(s.Names[0], "/")
		}
		if s.NetworkSettings != nil {
			ct.Addresses = addresses(s.NetworkSettings.Networks)
		}
		out = append(out, ct)
	}
	return out, nil
}

// ByID returns the container with that ID (in any state) from the
// engine's list, which reads the engine's snapshot of its containers and
// takes no container's lock: unlike an inspect, it answers while the
// engine is starting that very container (the runtime hook asks then).
// Pid is not set.
func (c *Client) ByID(ctx context.Context, id string) (Container, error) {
	res, err := c.c.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("id", id)})
	if err != nil {
		return Container{}, fmt.Errorf("list container %s: %w", id, err)
	}
	for _, s := range res.Items {
		if s.ID != id {
			continue // the filter matches ID prefixes
		}
		ct := Container{ID: s.ID, Labels: s.Labels, NetworkMode: s.HostConfig.NetworkMode}
		if len(s.Names) > 0 {
			ct.Name = strings.TrimPrefix(s.Names[0], "/")
		}
		return ct, nil
	}
	return Container{}, fmt.Errorf("container %s: not found", id)
}

// Inspect implements [Engine].
func (c *Client) Inspect(ctx context.Context, id string) (Container, error) {
	res, err := c.c.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return Container{}, fmt.Errorf("inspect container %s: %w", id, err)
	}
	r := res.Container
	ct := Container{ID: r.ID, Name: strings.TrimPrefix(r.Name, "/")}
	if r.Config != nil {
		ct.Labels = r.Config.Labels
	}
	if r.HostConfig != nil {
		ct.NetworkMode = string(r.HostConfig.NetworkMode)
	}
	if r.State != nil && r.State.Running {
		ct.Pid = r.State.Pid
	}
	if r.NetworkSettings != nil {
		ct.Addresses = addresses(r.NetworkSettings.Networks)
	}
	return ct, nil
}

// Events implements [Engine]: every container event (create, start, die,
// destroy, rename, ...) and network connects and disconnects, which change
// a container's addresses.
func (c *Client) Events(ctx context.Context) (<-chan string, <-chan error) {
	f := make(client.Filters).Add("type", string(events.ContainerEventType), string(events.NetworkEventType))
	res := c.c.Events(ctx, client.EventsListOptions{Filters: f})
	ids := make(chan string)
	errs := make(chan error, 1)
	go func() {
		defer close(ids)
		for {
			select {
			case m := <-res.Messages:
				id := m.Actor.ID
				if m.Type == events.NetworkEventType {
					id = m.Actor.Attributes["container"]
				}
				if id == "" {
					continue
				}
				select {
				case ids <- id:
				case <-ctx.Done():
					return
				}
			case err := <-res.Err:
				errs <- fmt.Errorf("docker events: %w", err)
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return ids, errs
}

// addresses returns the valid addresses of a container's networks, sorted.
func addresses(nets map[string]*network.EndpointSettings) []netip.Addr {
	var out []netip.Addr
	for _, n := range nets {
		if n == nil {
			continue
		}
		for _, a := range []netip.Addr{n.IPAddress, n.GlobalIPv6Address} {
			if a.IsValid() {
				out = append(out, a.Unmap())
			}
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out
}
