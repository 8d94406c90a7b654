"""The agency directory: HSDS data packages in and out, and the profiles matching reads."""
