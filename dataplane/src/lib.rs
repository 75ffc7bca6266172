//! AF_XDP sockets, UMEM, rings, the BPF loader and the smoltcp Device over the rings
