"""The running daemon: wires sensors, policy, firewall and store on one asyncio loop, and
serves the control socket the CLI talks to."""
