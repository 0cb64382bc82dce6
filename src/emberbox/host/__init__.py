"""Host plumbing any runtime needs, kept below the runtimes: host commands, per-sandbox
networks (netns, veth, nft, address leases), cgroups, disk images and overlay mounts, process
trees, and per-id locks. Nothing here knows about sandboxes beyond their ids."""
