"""digitbot: the command line and the settings shared by bot/, storage/ and worker/."""
