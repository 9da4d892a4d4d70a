"""HTTP edge shared by the functions: the resolver, RFC 9457 problems, request schemas and views."""
