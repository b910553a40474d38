// The contract, proven from Go (grpc-go, protoc-gen-go, protoc-gen-go-grpc) against the real
// binary: every RPC of streamexport.v1.ExportService (ListTasks included), the google.rpc error
// details read with status.FromError(err).Details(), the health service and reflection.
package conformance

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	pb "github.com/stream-export/stream-export/gen/go/streamexport/v1"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

var uuidPattern = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// newRequestID is a random version-4 UUID, for the idempotency keys.
func newRequestID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	_, err := rand.Read(b[:])
	must(t, err, "random bytes")
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	hex := func(p []byte) string {
		const digits = "0123456789abcdef"
		var s strings.Builder
		for _, c := range p {
			s.WriteByte(digits[c>>4])
			s.WriteByte(digits[c&0x0f])
		}
		return s.String()
	}
	return hex(b[0:4]) + "-" + hex(b[4:6]) + "-" + hex(b[6:8]) + "-" + hex(b[8:10]) + "-" + hex(b[10:16])
}

func ts(t *testing.T, text string) *timestamppb.Timestamp {
	t.Helper()
	value, err := time.Parse(time.RFC3339, text)
	must(t, err, "parse "+text)
	return timestamppb.New(value)
}

// watchToEnd reads a WatchTask stream to its end (OK) and checks the stream's guarantees for a
// task that completes; returns the events.
func watchToEnd(t *testing.T, taskID string) []*pb.TaskEvent {
	t.Helper()
	stream, err := client.WatchTask(ctx(t), &pb.WatchTaskRequest{TaskId: taskID})
	must(t, err, "WatchTask")
	var events []*pb.TaskEvent
	for {
		event, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		must(t, err, "WatchTask stream")
		events = append(events, event)
	}
	if len(events) == 0 {
		t.Fatal("a stream has at least its snapshot")
	}
	if events[0].GetType() != pb.TaskEvent_EVENT_TYPE_SNAPSHOT {
		t.Fatalf("first event %v, want a SNAPSHOT", events[0].GetType())
	}
	terminal := map[pb.TaskState]bool{
		pb.TaskState_TASK_STATE_COMPLETED: true,
		pb.TaskState_TASK_STATE_FAILED:    true,
		pb.TaskState_TASK_STATE_CANCELED:  true,
	}
	for i, event := range events {
		if event.GetSequence() != uint64(i+1) {
			t.Fatalf("event %d has sequence %d", i, event.GetSequence())
		}
		if i > 0 && event.GetType() == pb.TaskEvent_EVENT_TYPE_SNAPSHOT {
			t.Fatalf("event %d is a second SNAPSHOT", i)
		}
		if event.GetTask().GetTaskId() != taskID {
			t.Fatalf("event %d is about task %q", i, event.GetTask().GetTaskId())
		}
		if i < len(events)-1 && terminal[event.GetTask().GetState()] {
			t.Fatalf("event %d is terminal (%v) but not the last", i, event.GetTask().GetState())
		}
	}
	last := events[len(events)-1].GetTask()
	if last.GetState() != pb.TaskState_TASK_STATE_COMPLETED {
		t.Fatalf("last state %v, want COMPLETED: %v", last.GetState(), events)
	}
	if !strings.HasPrefix(last.GetResult().GetUrl(), "http") {
		t.Fatalf("result URL %q", last.GetResult().GetUrl())
	}
	if !last.GetResult().GetUrlExpireTime().AsTime().After(time.Now().Add(23 * time.Hour)) {
		t.Fatalf("the URL expires at %v, want 24 h from now", last.GetResult().GetUrlExpireTime().AsTime())
	}
	return events
}

func download(t *testing.T, url string) []byte {
	t.Helper()
	httpClient := http.Client{Timeout: 10 * time.Second}
	response, err := httpClient.Get(url)
	must(t, err, "download")
	defer response.Body.Close()
	body, err := io.ReadAll(response.Body)
	must(t, err, "download body")
	if response.StatusCode != http.StatusOK {
		t.Fatalf("download: HTTP %d", response.StatusCode)
	}
	return body
}

func jsonLines(t *testing.T, data []byte) []map[string]interface{} {
	t.Helper()
	var lines []map[string]interface{}
	scanner := bufio.NewScanner(bytes.NewReader(data))
	scanner.Buffer(make([]byte, 1<<20), 64<<20)
	for scanner.Scan() {
		if strings.TrimSpace(scanner.Text()) == "" {
			continue
		}
		var line map[string]interface{}
		must(t, json.Unmarshal(scanner.Bytes(), &line), "a JSON line")
		lines = append(lines, line)
	}
	must(t, scanner.Err(), "read JSON lines")
	return lines
}

// --- health and reflection ------------------------------------------------------------------

func TestHealthCheck(t *testing.T) {
	health := healthpb.NewHealthClient(conn)
	for _, name := range []string{"", service} {
		reply, err := health.Check(ctx(t), &healthpb.HealthCheckRequest{Service: name})
		must(t, err, "Check "+name)
		if reply.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check %q: %v", name, reply.GetStatus())
		}
	}
	_, err := health.Check(ctx(t), &healthpb.HealthCheckRequest{Service: "no.such.Service"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("Check of an unknown service: %v, want NOT_FOUND", err)
	}
}

// exportFile asks reflection (v1alpha, as grpcurl does) for the file of the export service.
func exportFile(t *testing.T) (services []string, file *descriptorpb.FileDescriptorProto) {
	t.Helper()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx(t))
	must(t, err, "ServerReflectionInfo")
	must(t, stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""},
	}), "send list_services")
	reply, err := stream.Recv()
	must(t, err, "list_services")
	for _, s := range reply.GetListServicesResponse().GetService() {
		services = append(services, s.GetName())
	}
	must(t, stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: service},
	}), "send file_containing_symbol")
	reply, err = stream.Recv()
	must(t, err, "file_containing_symbol")
	must(t, stream.CloseSend(), "close reflection stream")
	for _, raw := range reply.GetFileDescriptorResponse().GetFileDescriptorProto() {
		candidate := &descriptorpb.FileDescriptorProto{}
		must(t, proto.Unmarshal(raw, candidate), "decode a FileDescriptorProto")
		if candidate.GetName() == "streamexport/v1/export.proto" {
			file = candidate
		}
	}
	if file == nil {
		t.Fatal("reflection did not serve streamexport/v1/export.proto")
	}
	return services, file
}

// httpRule is the google.api.http option of a method of the served descriptor.
func httpRule(t *testing.T, file *descriptorpb.FileDescriptorProto, method string) *annotations.HttpRule {
	t.Helper()
	for _, m := range file.GetService()[0].GetMethod() {
		if m.GetName() == method {
			rule, ok := proto.GetExtension(m.GetOptions(), annotations.E_Http).(*annotations.HttpRule)
			if !ok || rule == nil {
				t.Fatalf("%s has no google.api.http option", method)
			}
			return rule
		}
	}
	t.Fatalf("the served descriptor has no method %s", method)
	return nil
}

func TestReflectionListsServicesAndServesHTTPAnnotations(t *testing.T) {
	services, file := exportFile(t)
	for _, want := range []string{service, "grpc.health.v1.Health"} {
		found := false
		for _, s := range services {
			found = found || s == want
		}
		if !found {
			t.Errorf("reflection lists %v, without %s", services, want)
		}
	}
	hasAnnotations := false
	for _, dependency := range file.GetDependency() {
		hasAnnotations = hasAnnotations || dependency == "google/api/annotations.proto"
	}
	if !hasAnnotations {
		t.Errorf("export.proto's dependencies %v lack google/api/annotations.proto", file.GetDependency())
	}
	if rule := httpRule(t, file, "GetTask"); rule.GetGet() != "/v1/tasks/{task_id}" {
		t.Errorf("GetTask http rule %v", rule)
	}
	if rule := httpRule(t, file, "ExportChannels"); rule.GetPost() != "/v1/exports/channels" || rule.GetBody() != "*" {
		t.Errorf("ExportChannels http rule %v", rule)
	}
}

// --- channel exports --------------------------------------------------------------------------

func TestExportChannelsV1WatchedToCompletion(t *testing.T) {
	reply, err := client.ExportChannels(ctx(t), &pb.ExportChannelsRequest{
		Channels:  []*pb.ChannelRef{{Type: "messaging", Id: "general"}},
		Version:   pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V1,
		RequestId: newRequestID(t),
	})
	must(t, err, "ExportChannels")
	if !uuidPattern.MatchString(reply.GetTaskId()) {
		t.Fatalf("task id %q is not a UUID", reply.GetTaskId())
	}
	events := watchToEnd(t, reply.GetTaskId())
	var document struct {
		Channels []struct {
			Channel struct {
				ID string `json:"id"`
			} `json:"channel"`
			Messages []json.RawMessage `json:"messages"`
		} `json:"channels"`
	}
	must(t, json.Unmarshal(download(t, events[len(events)-1].GetTask().GetResult().GetUrl()), &document), "the V1 document")
	if len(document.Channels) != 1 || document.Channels[0].Channel.ID != "general" {
		t.Fatalf("channels %+v, want general only", document.Channels)
	}
	if len(document.Channels[0].Messages) == 0 {
		t.Error("the general channel has messages")
	}
}

func TestExportChannelsV2WithAMessageWindow(t *testing.T) {
	since, until := ts(t, "2024-02-01T00:00:00Z"), ts(t, "2024-03-01T00:00:00Z")
	reply, err := client.ExportChannels(ctx(t), &pb.ExportChannelsRequest{
		Channels: []*pb.ChannelRef{
			{Type: "messaging", Id: "general", MessagesSince: since, MessagesUntil: until},
		},
		IncludeTruncatedMessages: true,
		Version:                  pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2,
	})
	must(t, err, "ExportChannels")
	events := watchToEnd(t, reply.GetTaskId())
	url := events[len(events)-1].GetTask().GetResult().GetUrl()
	if !strings.Contains(url, ".jsonl") {
		t.Errorf("V2 URL %q has no .jsonl", url)
	}
	kinds := map[string]bool{}
	messages := 0
	for _, line := range jsonLines(t, download(t, url)) {
		kind, _ := line["type"].(string)
		kinds[kind] = true
		if kind != "message" {
			continue
		}
		messages++
		item, _ := line["item"].(map[string]interface{})
		stamp, _ := item["created_at"].(string)
		created, err := time.Parse(time.RFC3339Nano, stamp)
		must(t, err, "created_at")
		if !created.After(since.AsTime()) || created.After(until.AsTime()) {
			t.Errorf("message created at %s is outside the window", stamp)
		}
	}
	if !kinds["channel"] || messages == 0 {
		t.Errorf("kinds %v, %d messages: want channel and message lines", kinds, messages)
	}
}

// --- user exports ---------------------------------------------------------------------------

func TestExportUsersThenGetTask(t *testing.T) {
	reply, err := client.ExportUsers(ctx(t), &pb.ExportUsersRequest{
		UserIds:   []string{"user-01", "user-02"},
		RequestId: newRequestID(t),
	})
	must(t, err, "ExportUsers")
	end := time.Now().Add(deadline)
	var task *pb.Task
	for {
		task, err = client.GetTask(ctx(t), &pb.GetTaskRequest{TaskId: reply.GetTaskId()})
		must(t, err, "GetTask")
		if task.GetTaskId() != reply.GetTaskId() || task.GetUpstreamStatus() == "" || task.GetCreateTime().GetSeconds() <= 0 {
			t.Fatalf("GetTask: %v", task)
		}
		if task.GetState() == pb.TaskState_TASK_STATE_COMPLETED {
			break
		}
		switch task.GetState() {
		case pb.TaskState_TASK_STATE_WAITING, pb.TaskState_TASK_STATE_PENDING, pb.TaskState_TASK_STATE_RUNNING:
		default:
			t.Fatalf("state %v", task.GetState())
		}
		if time.Now().After(end) {
			t.Fatal("the users export did not complete")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if task.GetUpstreamStatus() != "completed" {
		t.Errorf("upstream_status %q", task.GetUpstreamStatus())
	}
	if !task.GetResult().GetUrlExpireTime().AsTime().After(time.Now().Add(23 * time.Hour)) {
		t.Errorf("the URL expires at %v", task.GetResult().GetUrlExpireTime().AsTime())
	}
	var users []string
	for _, line := range jsonLines(t, download(t, task.GetResult().GetUrl())) {
		if line["type"] == "user" {
			item, _ := line["item"].(map[string]interface{})
			id, _ := item["id"].(string)
			users = append(users, id)
		}
	}
	sort.Strings(users)
	if !reflect.DeepEqual(users, []string{"user-01", "user-02"}) {
		t.Errorf("users %v", users)
	}
}

func TestExportUserKeepsCustomFields(t *testing.T) {
	reply, err := client.ExportUser(ctx(t), &pb.ExportUserRequest{UserId: "user-01"})
	must(t, err, "ExportUser")
	user := reply.GetUser().AsMap()
	if user["id"] != "user-01" {
		t.Errorf("user id %v", user["id"])
	}
	if team, ok := user["team"].(string); !ok || team == "" {
		t.Errorf("team %v", user["team"])
	}
	profile, _ := user["profile"].(map[string]interface{})
	location, _ := profile["location"].(map[string]interface{})
	if location["city"] == nil || location["city"] == "" || location["country"] == nil || location["country"] == "" {
		t.Errorf("profile.location %v", location)
	}
	if _, ok := profile["languages"].([]interface{}); !ok {
		t.Errorf("profile.languages %v is not a list", profile["languages"])
	}
	if len(reply.GetMessages()) == 0 {
		t.Error("no messages")
	}
	for _, message := range reply.GetMessages() {
		fields := message.AsMap()
		if fields["id"] == nil || fields["id"] == "" || fields["cid"] == nil || fields["cid"] == "" {
			t.Errorf("message %v", fields)
		}
		if value, ok := fields["user"]; !ok || value != nil {
			t.Errorf("message user %v: JSON null should survive as NullValue", value)
		}
	}
	for _, reaction := range reply.GetReactions() {
		if reaction.AsMap()["user_id"] != "user-01" {
			t.Errorf("reaction %v", reaction.AsMap())
		}
	}
}

func TestWatchTaskOfAFinishedTaskIsOneCompletedSnapshot(t *testing.T) {
	reply, err := client.ExportUsers(ctx(t), &pb.ExportUsersRequest{UserIds: []string{"user-03"}})
	must(t, err, "ExportUsers")
	watchToEnd(t, reply.GetTaskId())
	if events := watchToEnd(t, reply.GetTaskId()); len(events) != 1 {
		t.Errorf("%d events, want one COMPLETED snapshot", len(events))
	}
}

// --- errors, read with status.FromError(err).Details() ------------------------------------------

func TestInvalidChannelIDIsInvalidArgumentWithBadRequest(t *testing.T) {
	_, err := client.ExportChannels(ctx(t), &pb.ExportChannelsRequest{
		Channels: []*pb.ChannelRef{{Type: "messaging", Id: "not a valid id"}},
	})
	_, badRequest := errorDetails(t, err, codes.InvalidArgument, "INVALID_REQUEST")
	if badRequest == nil {
		t.Fatal("no BadRequest detail")
	}
	var fields []string
	for _, violation := range badRequest.GetFieldViolations() {
		fields = append(fields, violation.GetField())
	}
	if !reflect.DeepEqual(fields, []string{"channels[0].id"}) {
		t.Errorf("field violations %v", fields)
	}
}

func TestUnknownTaskIsNotFound(t *testing.T) {
	taskID := newRequestID(t)
	_, err := client.GetTask(ctx(t), &pb.GetTaskRequest{TaskId: taskID})
	errorDetails(t, err, codes.NotFound, "TASK_NOT_FOUND")

	stream, err := client.WatchTask(ctx(t), &pb.WatchTaskRequest{TaskId: taskID})
	must(t, err, "WatchTask")
	for err == nil {
		_, err = stream.Recv()
	}
	errorDetails(t, err, codes.NotFound, "TASK_NOT_FOUND")

	records, err := client.ReadExport(ctx(t), &pb.ReadExportRequest{TaskId: taskID})
	must(t, err, "ReadExport")
	for err == nil {
		_, err = records.Recv()
	}
	errorDetails(t, err, codes.NotFound, "TASK_NOT_FOUND")
}

func TestHeavyUserIsFailedPrecondition(t *testing.T) {
	_, err := client.ExportUser(ctx(t), &pb.ExportUserRequest{UserId: "heavy-user"})
	errorDetails(t, err, codes.FailedPrecondition, "USER_EXPORT_TOO_LARGE")
}

// --- reading an export ------------------------------------------------------------------------

// readExport reads a ReadExport stream to its end: the records as {"type", "item"} objects,
// as the file holds them, after checking that they are numbered from startIndex.
func readExport(t *testing.T, taskID string, startIndex uint64) []map[string]interface{} {
	t.Helper()
	stream, err := client.ReadExport(ctx(t), &pb.ReadExportRequest{TaskId: taskID, StartIndex: startIndex})
	must(t, err, "ReadExport")
	var records []map[string]interface{}
	for {
		record, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return records
		}
		must(t, err, "ReadExport stream")
		if want := startIndex + uint64(len(records)); record.GetIndex() != want {
			t.Fatalf("record index %d, want %d", record.GetIndex(), want)
		}
		records = append(records, map[string]interface{}{"type": record.GetKind(), "item": record.GetItem().AsMap()})
	}
}

func TestReadExportStreamsEveryRecordAndResumesByIndex(t *testing.T) {
	reply, err := client.ExportChannels(ctx(t), &pb.ExportChannelsRequest{
		Channels:    []*pb.ChannelRef{{Type: "messaging", Id: "general"}},
		Version:     pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2,
		ExportUsers: true,
	})
	must(t, err, "ExportChannels")
	events := watchToEnd(t, reply.GetTaskId())
	expected := jsonLines(t, download(t, events[len(events)-1].GetTask().GetResult().GetUrl()))
	if len(expected) < 2 {
		t.Fatalf("the export has %d lines", len(expected))
	}
	records := readExport(t, reply.GetTaskId(), 0)
	if len(records) != len(expected) {
		t.Fatalf("%d records, the file has %d lines", len(records), len(expected))
	}
	for i := range expected {
		// Both sides decode numbers as float64, as encoding/json and structpb do.
		if !reflect.DeepEqual(records[i], expected[i]) {
			t.Fatalf("record %d differs from the file:\n got %v\nwant %v", i, records[i], expected[i])
		}
	}
	tail := readExport(t, reply.GetTaskId(), uint64(len(expected)-2))
	if !reflect.DeepEqual(tail, expected[len(expected)-2:]) {
		t.Errorf("resuming at %d gave %v", len(expected)-2, tail)
	}
}

// readExportJSON reads a ReadExport stream with RECORD_ENCODING_JSON to its end: the JSON text
// of each record, after checking that each message starts at the count of records before it.
func readExportJSON(t *testing.T, taskID string, startIndex uint64) [][]byte {
	t.Helper()
	request := &pb.ReadExportRequest{
		TaskId: taskID, StartIndex: startIndex, Encoding: pb.RecordEncoding_RECORD_ENCODING_JSON,
	}
	stream, err := client.ReadExport(ctx(t), request)
	must(t, err, "ReadExport")
	var texts [][]byte
	for {
		message, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return texts
		}
		must(t, err, "ReadExport stream")
		if want := startIndex + uint64(len(texts)); message.GetIndex() != want {
			t.Fatalf("message index %d, want %d (the records before it)", message.GetIndex(), want)
		}
		if message.GetKind() != "" || message.GetItem() != nil || len(message.GetJson()) == 0 {
			t.Fatalf("a JSON message has kind %q, item %v and %d records", message.GetKind(), message.GetItem(),
				len(message.GetJson()))
		}
		texts = append(texts, message.GetJson()...)
	}
}

func TestReadExportAsJSONGivesTheSameRecordsAsStructs(t *testing.T) {
	for _, version := range []pb.ExportFormatVersion{
		pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2, pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V1,
	} {
		reply, err := client.ExportChannels(ctx(t), &pb.ExportChannelsRequest{
			Channels:    []*pb.ChannelRef{{Type: "messaging", Id: "general"}},
			Version:     version,
			ExportUsers: true,
		})
		must(t, err, "ExportChannels")
		events := watchToEnd(t, reply.GetTaskId())
		structs := readExport(t, reply.GetTaskId(), 0)
		if len(structs) < 2 {
			t.Fatalf("%v: the export has %d records", version, len(structs))
		}
		texts := readExportJSON(t, reply.GetTaskId(), 0)
		if len(texts) != len(structs) {
			t.Fatalf("%v: %d JSON records, %d Struct records", version, len(texts), len(structs))
		}
		for i, text := range texts {
			var envelope map[string]json.RawMessage
			must(t, json.Unmarshal(text, &envelope), "a JSON record")
			if len(envelope) != 2 || envelope["type"] == nil || envelope["item"] == nil {
				t.Fatalf("%v: record %d is not a {type, item} envelope: %s", version, i, text)
			}
			// Both sides decode numbers as float64, as encoding/json and structpb do.
			var record map[string]interface{}
			must(t, json.Unmarshal(text, &record), "a JSON record")
			if !reflect.DeepEqual(record, structs[i]) {
				t.Fatalf("%v: record %d differs from the Struct encoding's:\n got %v\nwant %v", version, i, record,
					structs[i])
			}
		}
		if version == pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2 {
			file := download(t, events[len(events)-1].GetTask().GetResult().GetUrl())
			var lines [][]byte
			for _, line := range bytes.Split(file, []byte("\n")) {
				if len(bytes.TrimSpace(line)) > 0 {
					lines = append(lines, line)
				}
			}
			if !reflect.DeepEqual(texts, lines) {
				t.Fatalf("the JSON records are not the V2 file's lines verbatim")
			}
		}
		start := uint64(len(texts) - 2)
		if tail := readExportJSON(t, reply.GetTaskId(), start); !reflect.DeepEqual(tail, texts[start:]) {
			t.Errorf("%v: resuming at %d gave %q", version, start, tail)
		}
	}
}

func TestReadExportOfAnUnfinishedTaskIsFailedPrecondition(t *testing.T) {
	reply, err := client.ExportUsers(ctx(t), &pb.ExportUsersRequest{UserIds: []string{"heavy-user"}})
	must(t, err, "ExportUsers")
	end := time.Now().Add(deadline)
	for {
		task, err := client.GetTask(ctx(t), &pb.GetTaskRequest{TaskId: reply.GetTaskId()})
		must(t, err, "GetTask")
		if task.GetState() == pb.TaskState_TASK_STATE_FAILED {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the heavy-user export did not fail: %v", task)
		}
		time.Sleep(50 * time.Millisecond)
	}
	stream, err := client.ReadExport(ctx(t), &pb.ReadExportRequest{TaskId: reply.GetTaskId()})
	must(t, err, "ReadExport")
	for err == nil {
		_, err = stream.Recv()
	}
	errorDetails(t, err, codes.FailedPrecondition, "TASK_NOT_COMPLETED")
}

// --- the task list ----------------------------------------------------------------------------

// listAll reads every page of ListTasks with the given page size and checks the pages: none
// larger than the page size, no task twice. Returns the tasks in order.
func listAll(t *testing.T, pageSize int32) []*pb.TaskRecord {
	t.Helper()
	var tasks []*pb.TaskRecord
	seen := map[string]bool{}
	token := ""
	for pages := 0; ; pages++ {
		if pages > 10000 {
			t.Fatal("ListTasks: more than 10000 pages")
		}
		reply, err := client.ListTasks(ctx(t), &pb.ListTasksRequest{PageSize: pageSize, PageToken: token})
		must(t, err, "ListTasks")
		if len(reply.GetTasks()) > int(pageSize) {
			t.Fatalf("ListTasks(page_size=%d) gave %d tasks", pageSize, len(reply.GetTasks()))
		}
		for _, task := range reply.GetTasks() {
			if seen[task.GetTaskId()] {
				t.Fatalf("task %s listed twice (page_size=%d)", task.GetTaskId(), pageSize)
			}
			seen[task.GetTaskId()] = true
			tasks = append(tasks, task)
		}
		if reply.GetNextPageToken() == "" {
			return tasks
		}
		if reply.GetNextPageToken() == token {
			t.Fatalf("ListTasks returned the page token it was given: %q", token)
		}
		token = reply.GetNextPageToken()
	}
}

func TestListTasksListsSubmittedTasksNewestFirstAndPaginates(t *testing.T) {
	channelsRequest := &pb.ExportChannelsRequest{
		Channels:  []*pb.ChannelRef{{Type: "messaging", Id: "general"}},
		Version:   pb.ExportFormatVersion_EXPORT_FORMAT_VERSION_V2,
		RequestId: newRequestID(t),
	}
	channels, err := client.ExportChannels(ctx(t), channelsRequest)
	must(t, err, "ExportChannels")
	usersRequest := &pb.ExportUsersRequest{UserIds: []string{"user-01"}, RequestId: newRequestID(t)}
	users, err := client.ExportUsers(ctx(t), usersRequest)
	must(t, err, "ExportUsers")
	// Watching the channels export to its end gives the service an observation of it.
	watchToEnd(t, channels.GetTaskId())

	all := listAll(t, 1000)
	position := map[string]int{}
	for i, task := range all {
		position[task.GetTaskId()] = i
		if task.GetCreateTime() == nil {
			t.Errorf("task %s has no create_time", task.GetTaskId())
		}
		if i > 0 && task.GetCreateTime().AsTime().After(all[i-1].GetCreateTime().AsTime()) {
			t.Errorf("not newest first: task %d (%v) after task %d (%v)", i, task.GetCreateTime().AsTime(),
				i-1, all[i-1].GetCreateTime().AsTime())
		}
	}
	channelsAt, ok := position[channels.GetTaskId()]
	if !ok {
		t.Fatalf("the ExportChannels task %s is not listed among %d tasks", channels.GetTaskId(), len(all))
	}
	usersAt, ok := position[users.GetTaskId()]
	if !ok {
		t.Fatalf("the ExportUsers task %s is not listed among %d tasks", users.GetTaskId(), len(all))
	}
	if usersAt > channelsAt {
		t.Errorf("the later submit (ExportUsers) is listed at %d, after the earlier one at %d", usersAt, channelsAt)
	}

	record := all[channelsAt]
	if record.GetRpc() != "ExportChannels" || record.GetOwner() != "anonymous" {
		t.Errorf("ExportChannels record: rpc %q owner %q, want ExportChannels, anonymous", record.GetRpc(), record.GetOwner())
	}
	if !proto.Equal(record.GetExportChannels(), channelsRequest) {
		t.Errorf("recorded submit %v, want %v", record.GetExportChannels(), channelsRequest)
	}
	if record.GetLastObserved().GetState() != pb.TaskState_TASK_STATE_COMPLETED || record.GetObserveTime() == nil {
		t.Errorf("after a watch to the end: last_observed %v, observe_time %v", record.GetLastObserved(), record.GetObserveTime())
	}
	record = all[usersAt]
	if record.GetRpc() != "ExportUsers" || record.GetOwner() != "anonymous" {
		t.Errorf("ExportUsers record: rpc %q owner %q, want ExportUsers, anonymous", record.GetRpc(), record.GetOwner())
	}
	if !proto.Equal(record.GetExportUsers(), usersRequest) {
		t.Errorf("recorded submit %v, want %v", record.GetExportUsers(), usersRequest)
	}

	// page_size=1: the first page has a next_page_token; the next page continues with another task.
	first, err := client.ListTasks(ctx(t), &pb.ListTasksRequest{PageSize: 1})
	must(t, err, "ListTasks(page_size=1)")
	if len(first.GetTasks()) != 1 || first.GetNextPageToken() == "" {
		t.Fatalf("ListTasks(page_size=1): %d tasks, next_page_token %q; want 1 and a token", len(first.GetTasks()), first.GetNextPageToken())
	}
	second, err := client.ListTasks(ctx(t), &pb.ListTasksRequest{PageSize: 1, PageToken: first.GetNextPageToken()})
	must(t, err, "ListTasks(page_token)")
	if len(second.GetTasks()) != 1 || second.GetTasks()[0].GetTaskId() == first.GetTasks()[0].GetTaskId() {
		t.Fatalf("the second page %v does not continue after %s", second.GetTasks(), first.GetTasks()[0].GetTaskId())
	}
	// Walking every page of one gives the same list as one large page.
	var one, large []string
	for _, task := range listAll(t, 1) {
		one = append(one, task.GetTaskId())
	}
	for _, task := range all {
		large = append(large, task.GetTaskId())
	}
	if !reflect.DeepEqual(one, large) {
		t.Errorf("pages of 1 list %v, one page lists %v", one, large)
	}

	// page_size 0 means 50.
	reply, err := client.ListTasks(ctx(t), &pb.ListTasksRequest{})
	must(t, err, "ListTasks(page_size=0)")
	if n := len(reply.GetTasks()); n == 0 || n > 50 {
		t.Errorf("ListTasks(page_size=0) gave %d tasks", n)
	}
}

func TestListTasksRejectsANegativePageSizeAndAForeignToken(t *testing.T) {
	for field, request := range map[string]*pb.ListTasksRequest{
		"page_size":  {PageSize: -1},
		"page_token": {PageSize: 10, PageToken: "not-a-page-token"},
	} {
		_, err := client.ListTasks(ctx(t), request)
		_, badRequest := errorDetails(t, err, codes.InvalidArgument, "INVALID_REQUEST")
		violations := badRequest.GetFieldViolations()
		if len(violations) != 1 || violations[0].GetField() != field {
			t.Errorf("ListTasks(%v): field violations %v, want one for %s", request, violations, field)
		}
	}
}

func TestReflectionServesListTasks(t *testing.T) {
	_, file := exportFile(t)
	if rule := httpRule(t, file, "ListTasks"); rule.GetGet() != "/v1/tasks" {
		t.Errorf("ListTasks http rule %v", rule)
	}
}
