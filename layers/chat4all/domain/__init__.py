"""Pure domain: models, status rules and errors. Imports no drivers, AWS SDK or Powertools."""
