"""Use cases. They speak only to ports, never to drivers, AWS or Powertools."""
