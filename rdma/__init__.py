"""The tfos tensor transport (comm interface, tcp/shm/rdma schemes). So far: device discovery."""
