"""Command-line front ends: udp-price-server, udp-price-client, udp-price-proxy and the demo."""
