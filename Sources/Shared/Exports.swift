// Shared = SharedCore + the C-library wrappers (libpq, libcurl) and the tracking schema; a file
// that imports Shared sees both (see Package.swift).
@_exported import SharedCore
