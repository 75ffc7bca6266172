// Placeholder until the steering program lands: passes everything to the kernel.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int steer(struct xdp_md *ctx) { return XDP_PASS; }

char LICENSE[] SEC("license") = "GPL";
