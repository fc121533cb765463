"""The embedded demo (`mtp-ds demo`) and everything only it uses; nothing outside this folder imports it."""
