"""Run the fault-injecting proxy from a checkout: `python fault_proxy.py --help`."""

from udp_price.cli.proxy import main

if __name__ == "__main__":
    raise SystemExit(main())
