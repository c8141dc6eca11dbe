"""udp-price: a UDP datagram price-quote service (server, retrying client, fault-injecting proxy)."""

__version__ = "0.1.0"
