// SPDX-License-Identifier: GPL-2.0
//
// Pantera's steering program (docs/design.md stage [1]).
//
// It decides, for every frame arriving on a NIC queue, who owns it:
//   - the appliance (redirected into the AF_XDP socket bound to this queue): ARP requests and
//     replies whose target protocol address is the service address, ICMP echo requests to it,
//     TCP segments to the service port;
//   - nobody (dropped silently, so closed ports look filtered, not closed): every other frame
//     to the service address, IPv4 fragments to it, and service frames whose headers are cut;
//   - the host kernel (XDP_PASS): everything else, so the host's own traffic is untouched —
//     unless stealth mode is on (below).
//
// Parsing is bounds-checked against data_end before every read (the verifier insists, and a
// frame is untrusted input). One 802.1Q/802.1ad tag is skipped; a second tag (QinQ) is not
// parsed and passes to the kernel. IPv4 options (IHL > 5) are honoured when locating L4.
//
// Truncated frames: if the frame ends before we can read the destination protocol address
// (ARP target, IPv4 daddr) we cannot tell whether it is ours, so it goes to the kernel, which
// drops malformed frames itself (counted pass_truncated). Once we know a frame is addressed to
// the service, any later inconsistency (IHL < 5, options or L4 header past the end) is dropped
// (counted drop_malformed): the appliance owns that address and the kernel must never see it.
//
// Configuration (service address and port) is one entry of the `config` array map, written by
// the loader before attach; both fields are in network byte order so the fast path compares
// without swapping. An all-zero config (not yet written) passes everything.
//
// Edge defence (docs/design.md "Under attack", docs/dataplane.md §1), all off or permissive
// until the loader says otherwise in `config` and the maps below:
//   - an optional allowlist of source prefixes (`allow_sources`, an LPM trie): when enabled,
//     TCP to the service port and ICMP echo to the service address from any other source are
//     dropped (drop_not_allowed). ARP is not filtered: ARP never crosses a router, and the
//     router in front of off-link clients must resolve the service address whatever its own
//     address is;
//   - a per-source SYN token bucket (`syn_buckets`, an LRU hash keyed by IPv4 source): a SYN
//     without ACK to the service port from a source whose bucket is empty is dropped
//     (drop_syn_rate);
//   - stealth: frames that are not the service's are dropped (drop_stealth_*) instead of
//     passed, unless they come from a source in `host_allow` (another LPM trie).
//
// Counters: one per verdict reason in a per-CPU array (no atomics on the fast path); the
// loader sums them over CPUs. The enum below is mirrored by `dataplane::SteerCounter`; keep
// the order and the count identical.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

// Upper bound on NIC queues an appliance binds; the loader rejects larger queue ids.
#define XSKS_MAX 64
// Entries of each source-prefix trie (`EDGE_CIDRS_MAX` in the loader).
#define CIDRS_MAX 1024
// Default entries of `syn_buckets`; the loader sets the configured size before loading.
#define SYN_SOURCES_MAX 65536

enum steer_counter {
    REDIRECT_ARP_REQUEST = 0,
    REDIRECT_ARP_REPLY = 1,
    REDIRECT_ICMP = 2,
    REDIRECT_TCP = 3,
    DROP_NO_SOCKET = 4,
    DROP_PORT = 5,
    DROP_UDP = 6,
    DROP_PROTO = 7,
    DROP_ICMP = 8,
    DROP_ARP = 9,
    DROP_FRAGMENT = 10,
    DROP_MALFORMED = 11,
    PASS_OTHER = 12,
    PASS_TRUNCATED = 13,
    PASS_UNCONFIGURED = 14,
    DROP_NOT_ALLOWED = 15,
    DROP_SYN_RATE = 16,
    DROP_STEALTH_IPV4 = 17,
    DROP_STEALTH_IPV6 = 18,
    DROP_STEALTH_ARP = 19,
    DROP_STEALTH_OTHER = 20,
    COUNTER_MAX = 21,
};

// steer_config.flags
#define EDGE_ALLOW_SOURCES 1 // enforce `allow_sources` (an empty list allows everyone)
#define EDGE_STEALTH 2       // drop what is neither the service's nor from `host_allow`

struct steer_config {
    __be32 service_ipv4; // network byte order
    __be16 service_port; // network byte order
    __u16 flags;         // EDGE_*
    // The SYN token bucket in integer nanoseconds (no floating point in BPF): one token is
    // worth syn_token_ns (10^9 / rate, computed by the loader) and a full bucket is
    // syn_bucket_ns (burst * syn_token_ns, at most 10^15). syn_token_ns == 0: no limit.
    __u64 syn_token_ns;
    __u64 syn_bucket_ns;
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct steer_config);
} config SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_XSKMAP);
    __uint(max_entries, XSKS_MAX);
    __type(key, __u32);
    __type(value, __u32);
} xsks SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, COUNTER_MAX);
    __type(key, __u32);
    __type(value, __u64);
} counters SEC(".maps");

// Key of the source-prefix tries (the kernel's struct bpf_lpm_trie_key layout: prefix length
// in bits, then the address in network byte order).
struct lpm_v4_key {
    __u32 prefixlen;
    __be32 addr;
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, CIDRS_MAX);
    __type(key, struct lpm_v4_key);
    __type(value, __u8);
    __uint(map_flags, BPF_F_NO_PREALLOC); // required for LPM tries
} allow_sources SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __uint(max_entries, CIDRS_MAX);
    __type(key, struct lpm_v4_key);
    __type(value, __u8);
    __uint(map_flags, BPF_F_NO_PREALLOC);
} host_allow SEC(".maps");

// One bucket per IPv4 source: the credit left, in nanoseconds of refill time, and when it was
// last refilled (bpf_ktime_get_ns, CLOCK_MONOTONIC).
struct syn_bucket {
    __u64 refilled_ns;
    __u64 credit_ns;
};

// Shared by all CPUs, not per-CPU: RSS spreads one source's connections over every queue, so
// a per-CPU bucket would multiply the rate by the number of queues the hash happens to pick.
// Updates are plain loads and stores on the shared value: two CPUs taking a SYN from the same
// source at the same instant may both spend the same token, so at most one extra SYN per
// racing CPU passes. That error is bounded by the CPU count and never blocks a client.
// LRU: when the map is full the least recently seen source is forgotten, and comes back with
// a full bucket (fails open; SYN cookies still cover a flood from more sources than fit).
struct {
    __uint(type, BPF_MAP_TYPE_LRU_HASH);
    __uint(max_entries, SYN_SOURCES_MAX);
    __type(key, __be32);
    __type(value, struct syn_bucket);
} syn_buckets SEC(".maps");

// 802.1Q tag (IEEE 802.1Q-2018 §9.6): TCI, then the encapsulated EtherType.
struct vlan_hdr {
    __be16 tci;
    __be16 encapsulated_proto;
};

// RFC 791 §3.1 flags/fragment-offset field (the kernel keeps these in net/ip.h, not uapi).
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

// ICMP echo request (RFC 792); <linux/icmp.h> drags in libc headers too.
#define ICMP_ECHO 8

struct icmphdr {
    __u8 type;
    __u8 code;
    __sum16 checksum;
    __be16 id;
    __be16 sequence;
};

// ARP (RFC 826). Declared here rather than taken from <linux/if_arp.h>, which pulls in libc
// headers that do not exist for the bpf target.
#define ARPHRD_ETHER 1
#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

struct arphdr {
    __be16 ar_hrd;
    __be16 ar_pro;
    unsigned char ar_hln;
    unsigned char ar_pln;
    __be16 ar_op;
};

// The Ethernet/IPv4 body of an ARP packet, after struct arphdr. Packed: the
// addresses are not naturally aligned, and clang then emits byte loads, which is what the
// packet may need anyway.
struct arp_eth_ipv4 {
    unsigned char sha[ETH_ALEN];
    __be32 spa;
    unsigned char tha[ETH_ALEN];
    __be32 tpa;
} __attribute__((packed));

static __always_inline int count(enum steer_counter reason, int action)
{
    __u32 key = reason;
    __u64 *value = bpf_map_lookup_elem(&counters, &key);
    if (value)
        *value += 1; // per-CPU slot: no other writer
    return action;
}

// Hands the frame to the AF_XDP socket of this queue. If no socket is bound there (the
// appliance is starting, stopping, or was configured with fewer queues than the NIC spreads
// flows over), the frame is service traffic the kernel must not see: passing it would let the
// host answer (RST, ICMP) or even forward it for an address it does not own. So it is dropped,
// but never silently: drop_no_socket counts it and is exported as a metric to alert on.
static __always_inline int redirect(struct xdp_md *ctx, enum steer_counter reason)
{
    int action = bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_DROP);
    if (action == XDP_REDIRECT)
        return count(reason, XDP_REDIRECT);
    return count(DROP_NO_SOCKET, XDP_DROP);
}

// Whether `source` falls in one of the prefixes of `trie` (longest-prefix match on a /32).
static __always_inline int source_in(void *trie, __be32 source)
{
    struct lpm_v4_key key = { .prefixlen = 32, .addr = source };
    return bpf_map_lookup_elem(trie, &key) != NULL;
}

// What happens to a frame that is not the service's: XDP_PASS to the host (counted `pass`),
// or, in stealth mode, dropped (counted `stealth`).
static __always_inline int not_ours(const struct steer_config *cfg, enum steer_counter pass,
                                    enum steer_counter stealth)
{
    if (cfg->flags & EDGE_STEALTH)
        return count(stealth, XDP_DROP);
    return count(pass, XDP_PASS);
}

// Takes one token from `source`'s bucket; returns 0 when it is empty (the SYN is dropped).
// Token bucket with integer nanoseconds: the credit grows by the time elapsed since the last
// refill, up to a full bucket, and a SYN costs syn_token_ns of it. No sum can overflow: the
// credit never exceeds syn_bucket_ns (<= 10^15) and elapsed time is compared, never added.
static __always_inline int syn_admit(const struct steer_config *cfg, __be32 source)
{
    __u64 cost = cfg->syn_token_ns;
    __u64 full = cfg->syn_bucket_ns;
    if (cost == 0)
        return 1;
    __u64 now = bpf_ktime_get_ns();
    struct syn_bucket *bucket = bpf_map_lookup_elem(&syn_buckets, &source);
    if (!bucket) {
        // A source not seen (or forgotten by the LRU) starts with a full bucket, less this SYN.
        struct syn_bucket fresh = { .refilled_ns = now, .credit_ns = full - cost };
        bpf_map_update_elem(&syn_buckets, &source, &fresh, BPF_ANY);
        return 1;
    }
    __u64 credit = bucket->credit_ns;
    __u64 last = bucket->refilled_ns;
    // Another CPU may have stored a later timestamp than ours: no time elapsed then.
    if (now > last) {
        __u64 elapsed = now - last;
        if (credit >= full || elapsed >= full - credit)
            credit = full;
        else
            credit += elapsed;
        bucket->refilled_ns = now;
    } else if (credit > full) {
        credit = full; // a bucket filled under an earlier, larger configuration
    }
    if (credit < cost) {
        bucket->credit_ns = credit;
        return 0;
    }
    bucket->credit_ns = credit - cost;
    return 1;
}

static __always_inline int steer_arp(struct xdp_md *ctx, void *l3, void *data_end,
                                     const struct steer_config *cfg)
{
    struct arphdr *arp = l3;
    struct arp_eth_ipv4 *body = (void *)(arp + 1);
    if ((void *)(body + 1) > data_end)
        return not_ours(cfg, PASS_TRUNCATED, DROP_STEALTH_ARP);
    // Only Ethernet/IPv4 ARP carries an IPv4 target address we could own.
    if (arp->ar_hrd != bpf_htons(ARPHRD_ETHER) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
        arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
        return not_ours(cfg, PASS_OTHER, DROP_STEALTH_ARP);
    if (body->tpa != cfg->service_ipv4) {
        // In stealth mode the host still resolves, and is resolved by, the hosts it allows.
        if ((cfg->flags & EDGE_STEALTH) && source_in(&host_allow, body->spa))
            return count(PASS_OTHER, XDP_PASS);
        return not_ours(cfg, PASS_OTHER, DROP_STEALTH_ARP);
    }
    // Requests are how clients find the service's MAC; replies answer the appliance's own
    // requests (its stack must resolve the client's MAC before it can send anything). Not
    // subject to allow_sources: see the head of this file.
    if (arp->ar_op == bpf_htons(ARPOP_REQUEST))
        return redirect(ctx, REDIRECT_ARP_REQUEST);
    if (arp->ar_op == bpf_htons(ARPOP_REPLY))
        return redirect(ctx, REDIRECT_ARP_REPLY);
    return count(DROP_ARP, XDP_DROP);
}

static __always_inline int steer_ipv4(struct xdp_md *ctx, void *l3, void *data_end,
                                      const struct steer_config *cfg)
{
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > data_end)
        return not_ours(cfg, PASS_TRUNCATED, DROP_STEALTH_IPV4);
    if (ip->version != 4)
        return not_ours(cfg, PASS_OTHER, DROP_STEALTH_IPV4);
    if (ip->daddr != cfg->service_ipv4) {
        if ((cfg->flags & EDGE_STEALTH) && source_in(&host_allow, ip->saddr))
            return count(PASS_OTHER, XDP_PASS);
        return not_ours(cfg, PASS_OTHER, DROP_STEALTH_IPV4);
    }

    // From here on the frame is addressed to the service: nothing reaches the kernel.
    // RFC 791 §3.1: IHL counts 32-bit words, minimum 5.
    __u32 ihl_bytes = ip->ihl * 4;
    if (ihl_bytes < sizeof(*ip))
        return count(DROP_MALFORMED, XDP_DROP);
    void *l4 = l3 + ihl_bytes;
    if (l4 > data_end)
        return count(DROP_MALFORMED, XDP_DROP);
    // RFC 791 §3.1: MF flag or a non-zero fragment offset means a fragment. The appliance does
    // no reassembly (a reassembly buffer is an attack surface), so fragments never reach it.
    if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
        return count(DROP_FRAGMENT, XDP_DROP);

    switch (ip->protocol) {
    case IPPROTO_TCP: {
        struct tcphdr *tcp = l4;
        if ((void *)(tcp + 1) > data_end)
            return count(DROP_MALFORMED, XDP_DROP);
        if (tcp->dest != cfg->service_port)
            return count(DROP_PORT, XDP_DROP);
        if ((cfg->flags & EDGE_ALLOW_SOURCES) && !source_in(&allow_sources, ip->saddr))
            return count(DROP_NOT_ALLOWED, XDP_DROP);
        // RFC 9293 §3.5: a SYN without ACK opens a connection; only those spend tokens.
        if (tcp->syn && !tcp->ack && !syn_admit(cfg, ip->saddr))
            return count(DROP_SYN_RATE, XDP_DROP);
        return redirect(ctx, REDIRECT_TCP);
    }
    case IPPROTO_ICMP: {
        struct icmphdr *icmp = l4;
        if ((void *)(icmp + 1) > data_end)
            return count(DROP_MALFORMED, XDP_DROP);
        if (icmp->type != ICMP_ECHO || icmp->code != 0)
            return count(DROP_ICMP, XDP_DROP);
        if ((cfg->flags & EDGE_ALLOW_SOURCES) && !source_in(&allow_sources, ip->saddr))
            return count(DROP_NOT_ALLOWED, XDP_DROP);
        return redirect(ctx, REDIRECT_ICMP);
    }
    case IPPROTO_UDP:
        return count(DROP_UDP, XDP_DROP);
    default:
        return count(DROP_PROTO, XDP_DROP);
    }
}

SEC("xdp")
int steer(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;

    __u32 zero = 0;
    const struct steer_config *cfg = bpf_map_lookup_elem(&config, &zero);
    if (!cfg || cfg->service_ipv4 == 0)
        return count(PASS_UNCONFIGURED, XDP_PASS);

    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return not_ours(cfg, PASS_TRUNCATED, DROP_STEALTH_OTHER);
    __be16 proto = eth->h_proto;
    void *l3 = eth + 1;

    if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
        struct vlan_hdr *vlan = l3;
        if ((void *)(vlan + 1) > data_end)
            return not_ours(cfg, PASS_TRUNCATED, DROP_STEALTH_OTHER);
        proto = vlan->encapsulated_proto;
        l3 = vlan + 1;
    }

    if (proto == bpf_htons(ETH_P_ARP))
        return steer_arp(ctx, l3, data_end, cfg);
    if (proto == bpf_htons(ETH_P_IP))
        return steer_ipv4(ctx, l3, data_end, cfg);
    if (proto == bpf_htons(ETH_P_IPV6))
        return not_ours(cfg, PASS_OTHER, DROP_STEALTH_IPV6);
    return not_ours(cfg, PASS_OTHER, DROP_STEALTH_OTHER);
}

char LICENSE[] SEC("license") = "GPL";
